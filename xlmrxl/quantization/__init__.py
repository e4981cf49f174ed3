"""int4 weight-only quantization of the model's linear layers (group-wise, torchao's zero-point convention).

    model = quantize(model, group_size=128, method="rtn", include_lm_head=False)     # in place; returns the model
    model = quantize(model, method="mse")                                           # data-free, searched per group
    model = quantize(model, method="gptq", calibration="texts.txt")                 # calibrated, layer by layer
    model = XLMRobertaXLForMaskedLM.from_pretrained(path, quantization="int4", quantization_method="mse")
    model.save_pretrained(out)   # qweight / scales / zeros in safetensors, quantization_config in config.json
    XLMRobertaXLForMaskedLM.from_pretrained(out, dtype=torch.bfloat16)    # QuantLinear modules, bit for bit

What is quantized: every ``nn.Linear`` inside the encoder layers (attention q / k / v / output, intermediate,
output; cross-attention too in decoders). With ``include_lm_head=True`` also the heads: ``lm_head.dense`` and
``lm_head.decoder`` (which then stops sharing the word embeddings: ``config.tie_word_embeddings`` becomes False),
the pooler, the classification / QA heads. Embeddings and LayerNorms keep their dtype. A chosen layer whose
in_features is not a multiple of the group size is an error naming it.

Methods (one format, one loader, the same kernels; ``config.quantization_config`` records ``"method"`` and
``"method_options"``):

- ``rtn`` (default): min-max round-to-nearest, torchao's int4 weight-only convention bit for bit (``params.py``).
- ``mse``: per group, the clipping range and then scale / zero searched for the least reconstruction error
  (``params.py``); data-free, so it also runs while loading.
- ``gptq``: calibrated on texts (a file, one per line, or a list; the model's tokenizer), layer by layer with the
  Hessian of each linear's real-token inputs, group-wise, no act-order (``gptq.py``, ``calibration.py``).

``config.quantization_config`` = ``{"format": "xlmrxl_int4", "loader": <how to load it>, "bits": 4, "group_size": G,
"zero_point_domain": "float", "include_lm_head": bool, "method": m, "method_options": {...}, "modules": [names]}``:
no ``quant_method``, so transformers refuses the checkpoint (a ValueError about the missing ``quant_method``) instead
of loading it with random linear layers (it skips an unknown ``quant_method`` with only a warning). Records written
before that (``quant_method: "xlmrxl_int4"``) still load; anything else in ``quantization_config`` is an error
(``checkpoint_record``).
Loading a directory whose config has it rebuilds the ``QuantLinear`` modules on the meta device first
(``prepare_quantized_model``), so the loader fills their buffers straight from the file. ``load_hook`` is the
loader's seam for quantize-while-loading (rtn / mse: each linear is quantized right after its full-precision weight
arrives and the weight is released, so at most one full-precision linear is alive at a time); ``finish_loading``
runs GPTQ on the loaded model. Quality: ``report.py`` (``weight_error``, ``hidden_cosine``); sizes of XL / XXL in
int4: ``xlmrxl.memory`` (it builds models on meta, so it sits above this package).
"""

from .api import (
    QUANT_METHOD,
    calibration_ids,
    checkpoint_record,
    finish_loading,
    load_hook,
    prepare_quantized_model,
    quantize,
    quantize_checkpoint,
    target_linears,
)
from .calibration import load_texts
from .gptq import gptq_matrix
from .linear import QuantLinear
from .params import METHODS, quantize_weight
from .report import (
    final_hidden_states,
    hidden_cosine,
    quality_lines,
    quantized_bytes_report,
    weight_error,
    weight_errors,
)

__all__ = [
    "METHODS",
    "QUANT_METHOD",
    "QuantLinear",
    "calibration_ids",
    "checkpoint_record",
    "final_hidden_states",
    "finish_loading",
    "gptq_matrix",
    "hidden_cosine",
    "load_hook",
    "load_texts",
    "prepare_quantized_model",
    "quality_lines",
    "quantize",
    "quantize_checkpoint",
    "quantize_weight",
    "target_linears",
    "quantized_bytes_report",
    "weight_error",
    "weight_errors",
]
