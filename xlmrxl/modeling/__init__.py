"""XLM-RoBERTa-XL / XXL model classes, API- and state-dict-compatible with transformers 4.56.2.

Contract:
- Same class names, constructor arguments, forward arguments, submodule and attribute names as transformers 4.56.2
  (``roberta.embeddings.word_embeddings``, ``roberta.encoder.layer[i].attention.self.query``, ..., ``lm_head.decoder``),
  so state dicts load both ways unchanged and ``xlmrxl.fast`` drives our encoder and transformers' alike.
- The *exact path* (``layers``) reproduces transformers' arithmetic in the model dtype: separate q/k/v GEMMs,
  pre-LayerNorm layers, final encoder LayerNorm, exact-erf GELU, additive float masks built exactly as 4.56.2 builds
  them (``masks``), SDPA where 4.56.2 uses SDPA (``config.attn_implementation="sdpa"``, the default) and the eager
  maths where it falls back to eager (``output_attentions``, relative positions, ``head_mask``, or
  ``attn_implementation="eager"``). fp32 parity with transformers is ~1e-7.
- Full 4.56.2 feature set: ``head_mask`` ([H] or [L, H]), ``position_embedding_type`` relative_key /
  relative_key_query, ``output_attentions`` / ``output_hidden_states``, decoder mode (causal + padding mask),
  cross-attention, ``past_key_values`` (``xlmrxl.caches`` objects, transformers' own cache objects, or legacy tuples;
  an ``EncoderDecoderCache`` is returned when the model creates one, as 4.56.2 does), ``return_dict=False`` tuples.
- Models register **no buffers**: position ids and zero token types are computed on the fly, so the checkpoint loader
  can build a model under ``torch.device("meta")`` and materialise parameters straight into the target dtype/device.
- Inputs are validated with one device sync per forward (``backbone``), raising ``ValueError`` naming value and limit.
- The encoder (``encoder``) asks ``xlmrxl.fast`` how to run each call: packed (padding-free), cached decoding, or the
  exact path, whose reason is logged once.

Files: ``masks`` (masks, positions, cache lengths), ``layers`` (exact-path modules), ``encoder``, ``base`` (the
pretrained-model base class), ``backbone`` (``XLMRobertaXLModel``), ``lm_heads``, ``task_heads``.
"""

from __future__ import annotations

from ..masks import create_position_ids_from_input_ids
from .backbone import XLMRobertaXLModel
from .base import XLMRobertaXLPreTrainedModel
from .lm_heads import XLMRobertaXLForCausalLM, XLMRobertaXLForMaskedLM
from .task_heads import (
    XLMRobertaXLForMultipleChoice,
    XLMRobertaXLForQuestionAnswering,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForTokenClassification,
)

__all__ = [
    "XLMRobertaXLPreTrainedModel",
    "XLMRobertaXLModel",
    "XLMRobertaXLForMaskedLM",
    "XLMRobertaXLForCausalLM",
    "XLMRobertaXLForSequenceClassification",
    "XLMRobertaXLForMultipleChoice",
    "XLMRobertaXLForTokenClassification",
    "XLMRobertaXLForQuestionAnswering",
    "create_position_ids_from_input_ids",
]
