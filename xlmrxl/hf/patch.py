"""In-place patching of transformers XLM-RoBERTa-XL models: ``accelerate``, ``deaccelerate``, ``is_accelerated``.

    model = transformers.XLMRobertaXLForMaskedLM.from_pretrained(...)
    model = xlmrxl.accelerate(model)          # the same object; forward now runs xlmrxl's fast encoder path

- ``accelerate(hf_model, backend="auto", quantization=None)`` takes ``XLMRobertaXLModel`` or any of its task heads
  (transformers 4.56.x and 5.x), or a client built on one (a COMET model, a sentence-transformers
  ``SentenceTransformer`` / ``CrossEncoder``: ``xlmrxl.clients`` finds the model inside and adds the client's own
  patches, COMET's packed layer mix), and returns **the same object**. Only the encoder module's ``forward`` is
  replaced, on the instance (the encoder forward is the level whose contract is the same in both versions: embeddings
  in, ``BaseModelOutputWithPastAndCrossAttentions`` out), so embeddings, heads, losses, output types,
  ``pipeline(...)`` and ``Trainer.predict`` are transformers' own code. The fused path (``xlmrxl.fast``) packs the
  real tokens, fuses q/k/v into one GEMM whose weight the three ``nn.Linear`` parameters become views of (state_dict
  unchanged, memory not doubled), and runs attention/add+LayerNorm/GELU FFN through
  ``xlmrxl.backend.Backend(backend)``: Triton kernels on CUDA, PyTorch references elsewhere. ``quantization="int4"``
  first swaps the encoder's linear layers for ``xlmrxl.quantization.QuantLinear`` (int4 group-128 weights); such a
  model saved with transformers' ``save_pretrained`` (before or after a forward: the same bytes) reloads bit for bit
  with xlmrxl's ``from_pretrained``; transformers refuses it (its ``quantization_config`` has no ``quant_method``).
  Asking for int4 again keeps the int4 layers as they are (idempotent).
- The padding mask: transformers hands its encoder an already-expanded mask (4D additive float, 4D bool, 2D, or None,
  depending on version and attention implementation). A forward pre-hook on the base model captures the user's 2D
  mask for the call; without it (the encoder called directly) the 2D mask is recovered from the 4D one and checked
  to be a plain padding (+ causal) mask; when it cannot be, that is a reason the route reports.
- Causal LMs (``is_decoder``) with a KV cache (``use_cache`` / ``past_key_values``: transformers' ``DynamicCache`` /
  ``EncoderDecoderCache``) run ``fast.decode.decoder_forward``: fused QKV, ``cache.update``, ``backend.attention(...,
  causal=True)``; the cache returned is the one transformers would return.
- ``xlmrxl.fast.route`` decides each call (packed, cached or exact), exactly as for our own encoder; ``is_decoder``
  is read from the config per call. Whatever cannot be accelerated runs the **original** encoder code for that call,
  with its logged reasons (``xlmrxl`` logger, INFO, once per reason): training with dropout, autograd recording,
  ``output_attentions``, relative positions, ``head_mask``, cross-attention, legacy tuple caches, custom 4D masks,
  forward hooks on encoder submodules, and (5.x) attentions captured by transformers' hooks.
  ``output_hidden_states`` is served by the fast path in both versions (5.x: the hidden states are handed to
  transformers' output collector as its hooks would).
- Outputs at padded positions are zeros (transformers leaves finite junk there); compare real tokens only. A masked-LM
  head's ``lm_head`` projects the real tokens only after a packed call (logits 0 at padding). A call whose result is
  computed from a padded position (sequence classification / multiple choice reading ``<s>`` of a left-padded row, a
  loss over padded positions) runs the exact path, with its reason.
- The encoder's cache argument is read under the name its signature declares (``cache`` from transformers 5.24,
  ``past_key_values`` before; the other name is accepted as the deprecated alias) and returned under the output
  class's field name, so no deprecation warning fires and the cache passed in is the one driven.
- A model whose ``config.model_type`` is not ``xlm-roberta-xl`` (``BertModel``, ``XLMRobertaModel``), or a client built
  on one (a SentenceTransformer with BERT, a COMET model on XLM-R large), is left
  unchanged, with a warning, and is not marked accelerated.
- ``deaccelerate(model)`` restores the original forward (the fused q/k/v views stay: they are ordinary parameters).
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backend import Backend
from ..clients import find_encoder
from ..fast.routing import CACHED, EXACT, PACKED, Call, is_causal, route
from ..fast.stack import run
from ..masks import check_binary_mask
from ..modeling import XLMRobertaXLPreTrainedModel
from ..modeling.base import first_token_padded_reason, labels_on_padding
from ..outputs import real_rows
from ..quantization import quantize
from .inputs import capture_state, fill_hidden_states, new_cache, padding_mask
from .signature import CACHE_NAMES, output_cache_field, signature

logger = logging.getLogger("xlmrxl")

__all__ = ["accelerate", "deaccelerate", "is_accelerated"]

_STATE = "_xlmrxl_accel"
_MODEL_TYPE = "xlm-roberta-xl"  # transformers' config.model_type of the models accelerate() takes


_LOCAL = threading.local()  # per-thread captured masks, keyed by id(state): one model may serve several threads


class _AccelState:
    """What ``accelerate`` keeps on the encoder. Plain data only, so an accelerated model deep-copies and pickles."""

    def __init__(self, backend: Backend, handles: tuple) -> None:
        self.backend = backend
        self.handles = handles

    @property
    def captured(self) -> tuple | None:
        """``(mask,)`` while the base model's forward runs in this thread, else None."""
        return getattr(_LOCAL, "masks", {}).get(id(self))

    @captured.setter
    def captured(self, value: tuple | None) -> None:
        _set_local("masks", id(self), value)

    @property
    def padded_loss(self) -> str | None:
        """While a task head's forward runs in this thread: what in its loss reads padded positions, if anything."""
        return getattr(_LOCAL, "losses", {}).get(id(self))

    @padded_loss.setter
    def padded_loss(self, value: str | None) -> None:
        _set_local("losses", id(self), value)

    @property
    def packed(self) -> tuple | None:
        """While a task head's forward runs in this thread: ``()``, then ``(keep mask,)`` once the encoder ran the
        packed path (read by the masked-LM head's real-rows forward); None outside a head's forward."""
        return getattr(_LOCAL, "packed", {}).get(id(self))

    @packed.setter
    def packed(self, value: tuple | None) -> None:
        _set_local("packed", id(self), value)


def _set_local(kind: str, key: int, value: Any) -> None:
    values = _LOCAL.__dict__.setdefault(kind, {})
    if value is None:
        values.pop(key, None)
    else:
        values[key] = value


class _RealRowsLMHead:
    """A masked-LM head's instance-level ``forward``: after a packed encoder call inside the head's forward, the
    vocabulary-wide projection runs on the real tokens only (logits at padded positions are 0, as the hidden states
    there are); otherwise transformers' own forward."""

    def __init__(self, head: nn.Module, encoder: nn.Module) -> None:
        self.head = head
        self.encoder = encoder

    def __call__(self, features: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        state = getattr(self.encoder, _STATE, None)
        packed = state.packed if state is not None else None
        own = type(self.head).forward
        if not packed or args or kwargs:
            return own(self.head, features, *args, **kwargs)
        state.packed = ()  # consumed: a second call in the same forward runs in full
        return real_rows(lambda x: own(self.head, x), features, packed[0])


class _AcceleratedForward:
    """The encoder's instance-level ``forward``: a picklable callable (a bound method of a module-level function
    would not unpickle)."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _accelerated_encoder_forward(self.encoder, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# accelerate / deaccelerate
# ---------------------------------------------------------------------------------------------------------------
def _base_model(model: nn.Module):
    prefix = getattr(model, "base_model_prefix", "roberta")
    base = getattr(model, prefix, None) if isinstance(getattr(model, prefix, None), nn.Module) else model
    enc = getattr(base, "encoder", None)
    if enc is None or not hasattr(enc, "layer") or not hasattr(base, "embeddings"):
        raise TypeError(
            f"expected a transformers XLMRobertaXLModel or one of its task heads (with .{prefix}.encoder), a COMET "
            f"model, a SentenceTransformer or a CrossEncoder, got {type(model).__module__}.{type(model).__name__}"
        )
    return base


def is_accelerated(model: nn.Module) -> bool:
    """True if ``model`` (a transformers model or a client holding one) has been passed through ``accelerate``."""
    try:
        client = find_encoder(model)  # COMET / sentence-transformers: the encoder inside
        if client is not None and not client.supported:
            return False
        model = model if client is None else client.model
        return hasattr(_base_model(model).encoder, _STATE)
    except TypeError:
        return False


def accelerate(
    hf_model: nn.Module, backend: Backend | str | None = "auto", quantization: str | None = None
) -> nn.Module:
    """Make ``hf_model``'s forward run xlmrxl's fast path; returns the same object (see the module docstring).

    ``backend``: "auto" (kernels on CUDA, references elsewhere), "triton" or "reference", or a ``Backend``.
    ``quantization``: None or "int4" (group size 128). Calling it again updates the backend (idempotent)."""
    be = backend if isinstance(backend, Backend) else Backend(backend)
    if quantization not in (None, "int4"):
        raise ValueError(f"quantization={quantization!r} is not supported; use None or 'int4'")
    client = find_encoder(hf_model)  # a COMET model / SentenceTransformer / CrossEncoder: its XL encoder inside
    if client is not None and not client.supported:  # built on BERT / XLM-R: left unchanged, like a BertModel
        _warn_unchanged(client.model, f"{type(hf_model).__name__} holding ")
        return hf_model
    if client is not None:
        accelerate(client.model, be, quantization)
        client.attach(be)
        return hf_model
    if isinstance(hf_model, XLMRobertaXLPreTrainedModel):  # already ours: its encoder routes itself
        hf_model.set_backend(be)
        if quantization == "int4":
            _quantize(hf_model)
        return hf_model
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type is not None and model_type != _MODEL_TYPE:
        _warn_unchanged(hf_model)
        return hf_model
    base = _base_model(hf_model)
    enc = base.encoder
    if quantization == "int4":
        _quantize(hf_model)
    state = getattr(enc, _STATE, None)
    if state is not None:
        state.backend = be
        return hf_model
    handles = (
        base.register_forward_pre_hook(_capture_mask, with_kwargs=True),
        base.register_forward_hook(_release_mask, with_kwargs=True, always_call=True),
    )
    if hf_model is not base:  # a task head: its loss may read padded positions (the route then takes the exact path)
        handles += (
            hf_model.register_forward_pre_hook(_capture_loss, with_kwargs=True),
            hf_model.register_forward_hook(_release_loss, with_kwargs=True, always_call=True),
        )
    setattr(enc, _STATE, _AccelState(be, handles))
    enc.forward = _AcceleratedForward(enc)
    lm_head = getattr(hf_model, "lm_head", None)
    if type(hf_model).__name__.endswith("ForMaskedLM") and isinstance(lm_head, nn.Module):
        lm_head.forward = _RealRowsLMHead(lm_head, enc)
    logger.info(
        "xlmrxl: accelerated %s (backend=%s%s)", type(hf_model).__name__, be.name, ", int4" if quantization else ""
    )
    return hf_model


def _warn_unchanged(model: nn.Module, holder: str = "") -> None:
    """e.g. BertModel or XLMRobertaModel: laid out alike, but another model (learned positions, post-LayerNorm)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    msg = (
        f"xlmrxl.accelerate: {holder}{type(model).__name__} (model_type={model_type!r}) is not an XLM-RoBERTa-XL "
        f"model (model_type={_MODEL_TYPE!r}); it was left unchanged and is not accelerated"
    )
    logger.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def deaccelerate(hf_model: nn.Module) -> nn.Module:
    """Undo ``accelerate``: the encoder runs transformers' own forward again. Returns the same object."""
    client = find_encoder(hf_model)
    if client is not None and not client.supported:
        return hf_model
    if client is not None:
        client.detach()
        deaccelerate(client.model)
        return hf_model
    base = _base_model(hf_model)
    enc = base.encoder
    state = getattr(enc, _STATE, None)
    if state is None:
        return hf_model
    for h in state.handles:
        h.remove()
    enc.__dict__.pop("forward", None)
    lm_head = getattr(hf_model, "lm_head", None)
    if isinstance(lm_head, nn.Module) and isinstance(lm_head.__dict__.get("forward"), _RealRowsLMHead):
        del lm_head.forward
    delattr(enc, _STATE)
    return hf_model


def _quantize(model: nn.Module) -> None:
    """int4 (group 128), once: a model that already has int4 layers (an earlier ``accelerate(..., "int4")``, an int4
    checkpoint) is kept as it is, so calling ``accelerate`` again is idempotent."""
    from ..quantization import QuantLinear  # (here: keeps the module's import block as it was)

    if any(isinstance(m, QuantLinear) for m in model.modules()):
        logger.info("xlmrxl: %s is already int4; kept as it is", type(model).__name__)
        return
    quantize(model, group_size=128)


# ---------------------------------------------------------------------------------------------------------------
# the padding mask
# ---------------------------------------------------------------------------------------------------------------
def _capture_mask(module: nn.Module, args: Any, kwargs: Any):
    state = getattr(module.encoder, _STATE, None)
    if state is not None:
        mask = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)
        if torch.is_tensor(mask) and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            check_binary_mask(mask)  # refused on every path, transformers' own code included (see README)
        state.captured = (mask,)


def _release_mask(module: nn.Module, args: Any, kwargs: Any, output):
    state = getattr(module.encoder, _STATE, None)
    if state is not None:
        state.captured = None


def _capture_loss(module: nn.Module, args: Any, kwargs: Any) -> None:
    state = getattr(_base_model(module).encoder, _STATE, None)
    if state is not None:
        state.padded_loss = _padded_loss(type(module).__name__, kwargs)
        state.packed = ()


def _release_loss(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
    state = getattr(_base_model(module).encoder, _STATE, None)
    if state is not None:
        state.padded_loss = None
        state.packed = None


def _padded_loss(head: str, kwargs: dict) -> str | None:
    """What in the head's loss reads padded positions (labels passed by keyword, as Trainer and pipelines do)."""
    mask = kwargs.get("attention_mask")
    if not torch.is_tensor(mask) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    if head.endswith(("ForSequenceClassification", "ForMultipleChoice")) and _first_padded(mask):
        return first_token_padded_reason("the classification head")
    if kwargs.get("start_positions") is not None and kwargs.get("end_positions") is not None:
        if bool((mask == 0).any()):
            return "the question-answering loss (its softmax covers padded positions)"
        return None
    labels = kwargs.get("labels")
    if labels is None:
        return None
    if head.endswith("ForCausalLM"):  # logits at position i predict the label at i + 1
        labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    if labels_on_padding(labels, mask):
        return "the loss has labels on (or predicted from) padded positions"
    return None


def _first_padded(mask: torch.Tensor) -> bool:
    """Is position 0 padding in some row (a left-padded batch)? One host sync."""
    return mask.dim() >= 2 and mask.shape[-1] > 0 and bool((mask[..., 0] == 0).any())


# ---------------------------------------------------------------------------------------------------------------
# the replacement encoder forward
# ---------------------------------------------------------------------------------------------------------------
def _accelerated_encoder_forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
    state: _AccelState = getattr(self, _STATE)
    original = type(self).forward
    spec, cache_kw = signature(type(self))
    legacy = spec.legacy
    bound = spec.bind((hidden_states, *args), kwargs)
    if bound is None:  # arguments transformers' own forward does not take: let it raise its own error
        return original(self, hidden_states, *args, **kwargs)
    a, extra = bound

    def get(name: str, default: Any = None):
        return a[name] if name in a else extra.get(name, default)

    out_hs = bool(get("output_hidden_states", False)) if legacy else False
    B, S = hidden_states.shape[:2]
    pkv = get(cache_kw)
    if pkv is None:  # an older name passed to a newer transformers (its deprecation alias, in **kwargs)
        pkv = next((extra[n] for n in CACHE_NAMES if n != cache_kw and extra.get(n) is not None), None)
    use_cache = bool(get("use_cache"))
    causal = is_causal(self)  # per call: a later change of config.is_decoder is seen
    caller_reasons = []
    collector = None
    if not legacy:
        reason, collector = capture_state(getattr(self, "config", None))
        if reason is not None:
            caller_reasons.append(reason)
        elif collector is not None:
            out_hs = True
    mask2d, reason = padding_mask(state.captured, get("attention_mask"), B, S, causal)
    if reason is not None:
        caller_reasons.append(reason)
    r = route(
        self,
        Call(
            hidden_states=hidden_states,
            attention_mask=mask2d,
            head_mask=get("head_mask"),
            output_attentions=bool(get("output_attentions", False)),
            encoder_hidden_states=get("encoder_hidden_states"),
            past_key_values=pkv,
            use_cache=use_cache,
            causal=causal,
            padded_loss=state.padded_loss,
            caller_reasons=tuple(caller_reasons),
        ),
    )
    if r.path == CACHED and pkv is None:
        pkv = new_cache(self.config, encoder_decoder=legacy)
    ran = run(
        self,
        r,
        hidden_states,
        state.backend,
        cache=pkv,
        output_hidden_states=out_hs,
        exact=lambda: original(self, hidden_states, *args, **kwargs),
    )
    if r.path == EXACT:
        return ran
    last, all_hs = ran
    if r.path == PACKED and state.packed is not None:  # inside a task head's forward: its LM head may skip padding
        state.packed = (r.mask,)
    if collector is not None:
        fill_hidden_states(collector, all_hs)
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions  # (transformers is optional)

    if legacy:  # 4.x returns whatever cache it was handed (or created)
        if not get("return_dict", True):
            return tuple(v for v in (last, pkv, all_hs) if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=last, past_key_values=pkv, hidden_states=all_hs, attentions=None, cross_attentions=None
        )
    field = output_cache_field(BaseModelOutputWithPastAndCrossAttentions)
    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=last, **{field: pkv if use_cache else None})
