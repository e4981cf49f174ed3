"""Accelerate an existing transformers XLM-RoBERTa-XL model in place, and convert between it and xlmrxl's classes.

    model = transformers.XLMRobertaXLForMaskedLM.from_pretrained(...)
    model = xlmrxl.accelerate(model)          # the same object; forward now runs xlmrxl's fast encoder path

- ``accelerate(hf_model, backend="auto", quantization=None)`` takes ``XLMRobertaXLModel`` or any of its task heads
  (transformers 4.56.x and 5.x) and returns **the same object**. Only the encoder module's ``forward`` is replaced,
  on the instance (the encoder forward is the level whose contract is the same in both versions: embeddings in,
  ``BaseModelOutputWithPastAndCrossAttentions`` out), so embeddings, heads, losses, output types, ``pipeline(...)``
  and ``Trainer.predict`` are transformers' own code. The fast path (``xlmrxl.fast_path``) packs the real tokens,
  fuses q/k/v into one GEMM whose weight the three ``nn.Linear`` parameters become views of (state_dict unchanged,
  memory not doubled), and runs attention/add+LayerNorm/GELU FFN through ``xlmrxl.backend.Backend(backend)``:
  Triton kernels on CUDA, PyTorch references elsewhere. ``quantization="int4"`` first swaps the encoder's linear
  layers for ``xlmrxl.quantization.QuantLinear`` (int4 group-128 weights); such a model saved with transformers'
  ``save_pretrained`` reloads (bit for bit) with xlmrxl's ``from_pretrained``, not with transformers'.
- The padding mask: transformers hands its encoder an already-expanded mask (4D additive float, 4D bool, 2D, or None,
  depending on version and attention implementation). A forward pre-hook on the base model captures the user's 2D
  mask for the call; without it (the encoder called directly) the 2D mask is recovered from the 4D one and checked
  to be a plain padding (+ causal) mask, else the call runs the original code.
- Causal LMs (``is_decoder``) with a KV cache (``use_cache`` / ``past_key_values``: transformers' ``DynamicCache`` /
  ``EncoderDecoderCache``) run ``fast_path.decoder_forward``: fused QKV, ``cache.update``, ``backend.attention(...,
  causal=True)``; the cache returned is the one transformers would return.
- Whatever cannot be accelerated runs the **original** encoder code for that call, with one logged reason
  (``xlmrxl`` logger, INFO, once per reason): training with dropout, autograd recording, ``output_attentions``,
  relative positions, ``head_mask``, cross-attention, legacy tuple caches, custom 4D masks, forward hooks on encoder
  submodules, and (5.x) attentions captured by transformers' hooks. ``output_hidden_states`` is served by the fast
  path in both versions (5.x: the hidden states are handed to transformers' output collector as its hooks would).
- Outputs at padded positions are zeros (transformers leaves finite junk there); compare real tokens only.
- ``deaccelerate(model)`` restores the original forward (the fused q/k/v views stay: they are ordinary parameters).
- ``from_transformers(hf_model, backend="auto")`` builds xlmrxl's model of the same class **sharing** the parameter
  objects (no copy); ``to_transformers(model)`` builds transformers' model of the same class sharing ours.
  transformers is imported only by the functions that need it.
"""

from __future__ import annotations

import inspect
import logging
import threading
import types

import torch
import torch.nn as nn

from . import fast_path
from .backend import Backend, log_once
from .clients import find_encoder

logger = logging.getLogger("xlmrxl")

__all__ = ["accelerate", "deaccelerate", "is_accelerated", "from_transformers", "to_transformers"]

_STATE = "_xlmrxl_accel"


_SIGNATURES: dict = {}
_LOCAL = threading.local()  # per-thread captured masks, keyed by id(state): one model may serve several threads


def _signature(cls):
    """(signature, name of its **kwargs or None, legacy 4.x layout?) of ``cls.forward``, computed once per class."""
    sig = _SIGNATURES.get(cls)
    if sig is None:
        s = inspect.signature(cls.forward)
        params = list(s.parameters.values())[1:]  # drop self
        var_kw = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
        sig = _SIGNATURES[cls] = (s, var_kw, "output_hidden_states" in s.parameters)
    return sig


class _AccelState:
    """What ``accelerate`` keeps on the encoder. Plain data only, so an accelerated model deep-copies and pickles."""

    def __init__(self, backend: Backend, causal: bool, handles):
        self.backend = backend
        self.causal = causal
        self.handles = handles

    @property
    def captured(self):
        """``(mask,)`` while the base model's forward runs in this thread, else None."""
        return getattr(_LOCAL, "masks", {}).get(id(self))

    @captured.setter
    def captured(self, value):
        masks = _LOCAL.__dict__.setdefault("masks", {})
        if value is None:
            masks.pop(id(self), None)
        else:
            masks[id(self)] = value


class _AcceleratedForward:
    """The encoder's instance-level ``forward``: a picklable callable (a bound method of a module-level function
    would not unpickle)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, *args, **kwargs):
        return _accelerated_encoder_forward(self.encoder, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# accelerate / deaccelerate
# ---------------------------------------------------------------------------------------------------------------
def _base_model(model):
    prefix = getattr(model, "base_model_prefix", "roberta")
    base = getattr(model, prefix, None) if isinstance(getattr(model, prefix, None), nn.Module) else model
    enc = getattr(base, "encoder", None)
    if enc is None or not hasattr(enc, "layer") or not hasattr(base, "embeddings"):
        raise TypeError(
            f"expected a transformers XLMRobertaXLModel or one of its task heads (with .{prefix}.encoder), a COMET "
            f"model, a SentenceTransformer or a CrossEncoder, got {type(model).__module__}.{type(model).__name__}"
        )
    return base


def _is_xlmrxl_model(model) -> bool:
    return type(model).__module__.startswith("xlmrxl.")


def is_accelerated(model) -> bool:
    """True if ``model`` (a transformers model) has been passed through ``accelerate``."""
    try:
        client = find_encoder(model)  # COMET / sentence-transformers: the encoder inside
        model = model if client is None else client.model
        return hasattr(_base_model(model).encoder, _STATE)
    except TypeError:
        return False


def accelerate(hf_model, backend="auto", quantization=None):
    """Make ``hf_model``'s forward run xlmrxl's fast path; returns the same object (see the module docstring).

    ``backend``: "auto" (kernels on CUDA, references elsewhere), "triton" or "reference", or a ``Backend``.
    ``quantization``: None or "int4" (group size 128). Calling it again updates the backend (idempotent)."""
    be = backend if isinstance(backend, Backend) else Backend(backend)
    if quantization not in (None, "int4"):
        raise ValueError(f"quantization={quantization!r} is not supported; use None or 'int4'")
    client = find_encoder(hf_model)  # a COMET model / SentenceTransformer / CrossEncoder: its XL encoder inside
    if client is not None:
        accelerate(client.model, be, quantization)
        client.attach(be)
        return hf_model
    if _is_xlmrxl_model(hf_model):  # already ours: its encoder takes the fast path natively
        if hasattr(hf_model, "set_backend"):
            hf_model.set_backend(be)
        if quantization == "int4":
            _quantize(hf_model)
        return hf_model
    base = _base_model(hf_model)
    enc = base.encoder
    if quantization == "int4":
        _quantize(hf_model)
    state = getattr(enc, _STATE, None)
    if state is not None:
        state.backend = be
        return hf_model
    causal = bool(getattr(getattr(base, "config", None), "is_decoder", False))
    handles = (
        base.register_forward_pre_hook(_capture_mask, with_kwargs=True),
        base.register_forward_hook(_release_mask, with_kwargs=True, always_call=True),
    )
    setattr(enc, _STATE, _AccelState(be, causal, handles))
    enc.forward = _AcceleratedForward(enc)
    logger.info(
        "xlmrxl: accelerated %s (backend=%s%s)", type(hf_model).__name__, be.name, ", int4" if quantization else ""
    )
    return hf_model


def deaccelerate(hf_model):
    """Undo ``accelerate``: the encoder runs transformers' own forward again. Returns the same object."""
    client = find_encoder(hf_model)
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
    delattr(enc, _STATE)
    return hf_model


def _quantize(model):
    try:
        from .quantization import quantize
    except ImportError as exc:  # pragma: no cover - depends on the int4 helper landing
        raise NotImplementedError(f"quantization='int4' needs xlmrxl.quantization ({exc})") from exc
    quantize(model, group_size=128)


# ---------------------------------------------------------------------------------------------------------------
# the padding mask
# ---------------------------------------------------------------------------------------------------------------
def _capture_mask(module, args, kwargs):
    state = getattr(module.encoder, _STATE, None)
    if state is not None:
        state.captured = (
            kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None),
        )


def _release_mask(module, args, kwargs, output):
    state = getattr(module.encoder, _STATE, None)
    if state is not None:
        state.captured = None


def _padding_mask(state: _AccelState, mask, B: int, S: int, past: int | None = None):
    """(2D mask or None, None) when this call's padding is a plain key mask; else (None, reason).
    ``past`` (cached calls): the mask covers ``past + S`` keys and must come from the model-level capture."""
    if state.captured is not None:
        m = state.captured[0]
        if m is None:
            return None, None
        K = S if past is None else past + S
        if torch.is_tensor(m) and m.dim() == 2 and tuple(m.shape) == (B, K):
            return m, None
    if past is not None:
        if mask is None:
            return None, None
        return None, "a cached call's mask could not be taken from the model's 2D attention_mask"
    # The encoder was called directly, or with a mask the model expanded itself: read it back from what we got.
    if mask is None:
        return None, None
    if not torch.is_tensor(mask):
        return None, f"attention mask of type {type(mask).__name__} is not a tensor"
    if mask.dim() == 2:
        if tuple(mask.shape) == (B, S):
            return mask, None
        return None, f"2D attention mask of shape {tuple(mask.shape)} for hidden states of ({B}, {S})"
    if (
        mask.dim() != 4
        or mask.shape[0] != B
        or mask.shape[1] != 1
        or mask.shape[-1] != S
        or mask.shape[2] not in (1, S)
    ):
        return None, f"attention mask of shape {tuple(mask.shape)} is not a (batch, 1, q, keys) padding mask"
    keep = mask if mask.dtype == torch.bool else mask == 0  # additive masks: 0 = attend, dtype-min = masked
    row = keep[:, 0, -1, :]
    if keep.shape[2] > 1 or state.causal:
        expected = row[:, None, None, :].expand(B, 1, S, S)
        if state.causal:
            expected = expected & torch.ones(S, S, dtype=torch.bool, device=keep.device).tril()
        if keep.shape[2] == 1 or not torch.equal(keep, expected):
            return None, "the 4D attention mask is not a plain padding mask (custom masks run the exact path)"
    return row, None


def _capture_state(config):
    """transformers 5.x records hidden states / attentions with hooks on the layers while a collection is active.
    Returns (reason or None, the collected-outputs dict to fill with hidden states or None)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except Exception:
        return None, None
    try:
        collected = _active_collector.get()
    except Exception:  # pragma: no cover - private API changed
        return "cannot tell whether transformers is capturing layer outputs", None
    keys = [k for k in (collected or {}) if not k.startswith("_")]
    if not keys:
        return None, None
    tie = getattr(config, "tie_last_hidden_states", None)
    if (
        keys == ["hidden_states"]
        and isinstance(collected["hidden_states"], list)
        and not collected["hidden_states"]
        and tie in (None, True)
    ):
        return None, collected
    return f"transformers is capturing {', '.join(keys)} with layer hooks (output_attentions)", None


def _fill_hidden_states(collected: dict, all_hs) -> None:
    """Append the hidden states the way transformers' capture hooks would (its selection of indices honoured)."""
    out = collected["hidden_states"]
    selection = collected.get("_hidden_states_layers")
    for h in all_hs:
        out.append(h if selection is None or len(out) in selection else None)


# ---------------------------------------------------------------------------------------------------------------
# the replacement encoder forward
# ---------------------------------------------------------------------------------------------------------------
def _accelerated_encoder_forward(self, hidden_states, *args, **kwargs):
    state: _AccelState = getattr(self, _STATE)
    original = type(self).forward
    signature, var_kw, legacy = _signature(type(self))
    try:
        bound = signature.bind(self, hidden_states, *args, **kwargs)
    except TypeError:
        return original(self, hidden_states, *args, **kwargs)
    a = dict(bound.arguments)
    extra = a.pop(var_kw, {}) if var_kw else {}

    def get(name, default=None):
        return a[name] if name in a else extra.get(name, default)

    out_hs = bool(get("output_hidden_states", False)) if legacy else False
    B, S = hidden_states.shape[:2]
    pkv, use_cache = get("past_key_values"), bool(get("use_cache"))
    cached = state.causal and (pkv is not None or use_cache)
    reason, collector = (None, None) if legacy else _capture_state(getattr(self, "config", None))
    if collector is not None:
        out_hs = True
    mask2d, past = None, 0
    if reason is None and cached:
        past, reason = _past_length(pkv)
    if reason is None:
        mask2d, reason = _padding_mask(state, get("attention_mask"), B, S, past if cached else None)
    if reason is not None:
        log_once(f"xlmrxl: accelerated encoder runs transformers' code: {reason}")
    else:
        reason = fast_path.unsupported_reason(
            self,
            attention_mask=mask2d,
            head_mask=get("head_mask"),
            output_attentions=get("output_attentions", False),
            encoder_hidden_states=get("encoder_hidden_states"),
            past_key_values=pkv,
            use_cache=use_cache,
            training=self.training,
            causal=state.causal,
            hidden_states=hidden_states,
            allow_cache=True,
        )
    if reason is not None:
        return original(self, hidden_states, *args, **kwargs)

    if cached:
        if pkv is None:
            pkv = _new_cache(self.config, encoder_decoder=legacy)
        self_cache = getattr(pkv, "self_attention_cache", pkv)
        last, all_hs = fast_path.decoder_forward(
            self, hidden_states, mask2d, self_cache, state.backend, output_hidden_states=out_hs
        )
    else:
        last, all_hs = fast_path.encoder_forward(
            self, hidden_states, mask2d, state.backend, output_hidden_states=out_hs, causal=state.causal
        )
    if collector is not None:
        _fill_hidden_states(collector, all_hs)
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

    if legacy:  # 4.x returns whatever cache it was handed (or created)
        if not get("return_dict", True):
            return tuple(v for v in (last, pkv, all_hs) if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=last, past_key_values=pkv, hidden_states=all_hs, attentions=None, cross_attentions=None
        )
    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=last, past_key_values=pkv if use_cache else None)


def _past_length(pkv):
    """(cached length, None), or (0, reason) for a cache kind the fast path does not drive."""
    if pkv is None:
        return 0, None
    cache = getattr(pkv, "self_attention_cache", pkv)
    if not (hasattr(cache, "update") and hasattr(cache, "get_seq_length")):
        return 0, f"past_key_values of type {type(pkv).__name__} (legacy tuples run transformers' code)"
    if _is_preallocated(cache):
        # transformers' static caches write at `cache_position` and hand back the whole preallocated buffer; the
        # fused step drives growing caches (or xlmrxl.StaticCache) only
        return 0, (
            f"transformers' {type(cache).__name__} (preallocated) is not driven by the fused step; use "
            "DynamicCache or xlmrxl.StaticCache"
        )
    return int(cache.get_seq_length()), None


def _is_preallocated(cache) -> bool:
    if type(cache).__module__.startswith("xlmrxl"):
        return False
    try:
        from transformers.cache_utils import DynamicCache
    except Exception:  # pragma: no cover
        return False
    return not isinstance(cache, DynamicCache)


def _new_cache(config, encoder_decoder: bool):
    """The cache transformers' own encoder would create for ``use_cache=True`` without one."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    def dyn():
        try:
            return DynamicCache(config=config)
        except TypeError:  # older signatures take no config
            return DynamicCache()

    return EncoderDecoderCache(dyn(), dyn()) if encoder_decoder else dyn()


# ---------------------------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------------------------
def _share_into(src: nn.Module, dst: nn.Module) -> list:
    """Make ``dst`` use ``src``'s parameter (and buffer) objects by name; int4 modules are shared whole.
    Returns the names of ``dst``'s buffers still on the meta device (``src`` has no such buffer)."""
    for name, mod in list(src.named_modules()):
        if name and fast_path._is_int4(mod):
            parent, _, leaf = name.rpartition(".")
            try:
                holder = dst.get_submodule(parent) if parent else dst
            except AttributeError:
                continue
            if hasattr(holder, leaf):
                setattr(holder, leaf, mod)
    src_params = dict(src.named_parameters(remove_duplicate=False))
    src_bufs = dict(src.named_buffers(remove_duplicate=False))
    missing, meta_buffers, mismatched = [], [], []
    for name, p in list(dst.named_parameters(remove_duplicate=False)):
        parent, _, leaf = name.rpartition(".")
        holder = dst.get_submodule(parent) if parent else dst
        if name not in src_params:
            missing.append(name)
        elif src_params[name].shape != p.shape:
            mismatched.append(f"{name} {tuple(src_params[name].shape)} vs {tuple(p.shape)}")
        else:
            holder._parameters[leaf] = src_params[name]
    if mismatched:
        raise ValueError(
            f"cannot share weights between {type(src).__name__} and {type(dst).__name__}: shapes differ "
            f"(source vs target) for {mismatched[:4]}{'...' if len(mismatched) > 4 else ''}; were heads "
            "pruned or the config edited after loading?"
        )
    for name, buf in list(dst.named_buffers(remove_duplicate=False)):
        parent, _, leaf = name.rpartition(".")
        holder = dst.get_submodule(parent) if parent else dst
        if name in src_bufs:
            holder._buffers[leaf] = src_bufs[name]
        elif buf.is_meta:
            meta_buffers.append(name)
    extra = sorted(set(src_params) - {n for n, _ in dst.named_parameters(remove_duplicate=False)})
    if missing or extra:
        raise ValueError(
            f"cannot share weights between {type(src).__name__} and {type(dst).__name__}: "
            f"missing in the source {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"not in the target {extra[:8]}{'...' if len(extra) > 8 else ''}"
        )
    return meta_buffers


def _model_kwargs(model) -> dict:
    if type(model).__name__ == "XLMRobertaXLModel":
        return {"add_pooling_layer": getattr(model, "pooler", None) is not None}
    return {}


def from_transformers(hf_model, backend="auto"):
    """xlmrxl's model of the same class as ``hf_model`` (transformers), sharing its parameter objects."""
    from . import modeling
    from .config import XLMRobertaXLConfig

    name = type(hf_model).__name__
    cls = getattr(modeling, name, None)
    if cls is None or not isinstance(cls, type):
        raise TypeError(f"from_transformers() takes a transformers XLM-RoBERTa-XL model; there is no xlmrxl.{name}")
    cfg = XLMRobertaXLConfig.from_dict(hf_model.config.to_dict())
    with torch.device("meta"):
        ours = cls(cfg, **_model_kwargs(hf_model))
    left = _share_into(hf_model, ours)
    if left:
        raise ValueError(f"from_transformers: xlmrxl's {name} has buffers {left} that transformers' model lacks")
    ours.train(hf_model.training)
    if hasattr(ours, "set_backend"):
        ours.set_backend(backend.name if isinstance(backend, Backend) else backend)
    return ours


def to_transformers(model):
    """transformers' model of the same class as ``model`` (xlmrxl), sharing its parameter objects."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("to_transformers() needs the transformers package (pip install transformers)") from exc
    name = type(model).__name__
    cls = getattr(transformers, name, None)
    if cls is None:
        raise TypeError(f"transformers {transformers.__version__} has no {name}")
    cfg = transformers.XLMRobertaXLConfig.from_dict(model.config.to_dict())
    with torch.device("meta"):
        hf = cls(cfg, **_model_kwargs(model))
    _share_into(model, hf)
    dev = next(model.parameters()).device
    for bname, buf in list(hf.named_buffers(remove_duplicate=False)):
        if not buf.is_meta:
            continue
        parent, _, leaf = bname.rpartition(".")
        holder = hf.get_submodule(parent) if parent else hf
        if leaf == "position_ids":
            holder._buffers[leaf] = torch.arange(buf.shape[-1], device=dev).expand(buf.shape).contiguous()
        elif leaf == "token_type_ids":
            holder._buffers[leaf] = torch.zeros(buf.shape, dtype=buf.dtype, device=dev)
        else:
            raise ValueError(f"to_transformers: transformers' {name} has a buffer {bname!r} xlmrxl cannot fill")
    hf.train(model.training)
    return hf


class _CallableModule(types.ModuleType):
    """``xlmrxl.accelerate`` is both this module and the function: once ``import xlmrxl.accelerate`` has run, the
    package attribute is the module, so calling it must still mean ``accelerate(...)``."""

    def __call__(self, *args, **kwargs):
        return accelerate(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
