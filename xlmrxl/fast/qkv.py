"""The fused q/k/v projection: one ``(3H, H)`` weight the three ``nn.Linear`` parameters become views of.

The first fast forward of a layer concatenates q/k/v weights (and biases) into one contiguous ``(3H, H)`` buffer and
re-points the three parameters at views of it (``param.data = view``), so no memory is doubled, the Parameter objects
stay the same, and ``state_dict`` keys and values are unchanged. A later ``model.to(...)``/``half()`` replaces the
storages; the next forward sees the views broken (data_ptr check) and fuses again. int4 q/k/v layers are
concatenated along N once, and their buffers become views of the concatenation (no copy).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..quantization import QuantLinear

logger = logging.getLogger("xlmrxl")


def is_int4(m: nn.Module) -> bool:
    """An int4 ``QuantLinear`` (or anything laid out like one)."""
    return all(hasattr(m, a) for a in ("qweight", "scales", "zeros", "group_size"))


def _views_intact(parts, fused: torch.Tensor) -> bool:
    """Are ``parts`` still the consecutive row blocks of ``fused`` (pointer arithmetic only: runs per layer)?"""
    ptr, row = fused.data_ptr(), fused[0].numel() * fused.element_size() if fused.dim() > 1 else fused.element_size()
    off = 0
    for p in parts:
        if p.data_ptr() != ptr + off * row or p.dtype != fused.dtype or not p.is_contiguous():
            return False
        off += p.shape[0]
    return off == fused.shape[0]


def fuse_qkv(self_attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused ``(3H, H)`` weight and ``(3H,)`` bias of ``self_attn.{query,key,value}`` (nn.Linear), making the
    three parameters views of it on first use (or after ``.to()`` broke the views). Memory is not doubled."""
    mods = self_attn._modules  # dict reads, not nn.Module.__getattr__: this runs per layer and call
    ws = [mods[n]._parameters["weight"] for n in ("query", "key", "value")]
    bs = [mods[n]._parameters.get("bias") for n in ("query", "key", "value")]
    # the common case, per layer and call: the same storages as last time (the cache holds W and b alive, so a
    # new storage can never reuse their addresses); a data pointer comparison is enough
    key = tuple(t.data_ptr() if t is not None else 0 for t in ws + bs)
    cached = self_attn.__dict__.get("_xlmrxl_qkv")
    if cached is not None:
        W, b, seen = cached
        if seen == key:
            return W, b
        if _views_intact(ws, W) and (b is None or all(x is None for x in bs) or _views_intact(bs, b)):
            self_attn._xlmrxl_qkv = (W, b, key)
            return W, b
    # Never create the buffer as an inference tensor: the parameters become views of it and must stay usable
    # outside torch.inference_mode() (autograd, optimizers).
    with torch.no_grad(), torch.inference_mode(False):
        W = torch.cat([w.detach() for w in ws], dim=0)
        for i, w in enumerate(ws):
            off = sum(x.shape[0] for x in ws[:i])
            w.data = W[off : off + w.shape[0]]
        if all(x is None for x in bs):
            b = None
        else:
            b = torch.cat([x.detach() if x is not None else W.new_zeros(w.shape[0]) for x, w in zip(bs, ws)])
            for i, x in enumerate(bs):
                if x is not None:
                    off = sum(w.shape[0] for w in ws[:i])
                    x.data = b[off : off + x.shape[0]]
    self_attn._xlmrxl_qkv = (W, b, tuple(t.data_ptr() if t is not None else 0 for t in ws + bs))
    logger.debug("xlmrxl: fused q/k/v of %s into one (%d, %d) buffer", type(self_attn).__name__, *W.shape)
    return W, b


def fused_qkv_module(sa: nn.Module) -> tuple:
    """What to run the QKV GEMM with: ("dense", W, b) or ("int4", QuantLinear) or ("split", None)."""
    mods = (sa.query, sa.key, sa.value)
    if all(isinstance(m, nn.Linear) for m in mods):
        W, b = fuse_qkv(sa)
        return ("dense", W, b)
    if all(is_int4(m) for m in mods) and len({m.group_size for m in mods}) == 1:
        cached = getattr(sa, "_xlmrxl_qkv_int4", None)
        if cached is None or not all(
            a[0] is m.qweight and a[1] is m.scales and a[2] is m.zeros and a[3] is m.bias
            for a, m in zip(cached[1], mods)
        ):
            # the three layers' buffers become views of the concatenated ones: no second copy of the weights
            with torch.no_grad(), torch.inference_mode(False):
                cat = QuantLinear.concat(mods, share_storage=True)
            cached = (cat, tuple((m.qweight, m.scales, m.zeros, m.bias) for m in mods))
            sa._xlmrxl_qkv_int4 = cached
        return ("int4", cached[0])
    return ("split", None)
