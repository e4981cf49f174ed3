"""One fused encoder layer on packed tokens: the op choices of a (backend, device) bound per call site, the residual
stream with its fused add + LayerNorm, and the layer itself (q/k/v GEMM, attention, output projection + residual,
GELU FFN + residual). ``xlmrxl.fast.stack`` runs it layer after layer."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backend import Backend
from .structure import LayerPlan, is_int4

# call site -> op: each site of a layer gets its own bound callable (the o and down projections differ in K)
SITES = {
    "norm": "add_layernorm",  # LayerNorm without a pending residual
    "norm_add": "add_layernorm",  # residual add + LayerNorm
    "attn": "attention_varlen",  # packed self-attention
    "cached_attn": "attention",  # decode / prefill against a KV cache
    "o": "linear_residual",
    "up": "linear_gelu",
    "down": "linear_residual",
    "qkv4": "int4_matmul",
    "o4": "int4_matmul",
    "up4": "int4_matmul",
    "down4": "int4_matmul",
}


class Sites:
    """The bound callables of one (backend, device, token bucket, dtype, host lengths): an attribute per call site
    (``SITES``). A site's first call asks the op table (``Backend.choose``) with its real arguments and replaces
    the attribute with the bound callable (a lean launcher for a Triton kernel), so every later call of that site
    goes straight to it: no predicate, no key."""

    def __init__(self, be: Backend) -> None:
        self._be = be

    def __getattr__(self, site: str) -> Callable:
        op = SITES.get(site)
        if op is None:
            raise AttributeError(site)
        be = self._be

        def first_call(*args: Any, **kwargs: Any) -> Any:
            choice = be.choose(op, args, kwargs)
            fn = choice.bind(args, kwargs)
            if choice.source != "capture":  # a stand-in chosen inside CUDA-graph capture is not kept
                setattr(self, site, fn)
            return fn(*args, **kwargs)

        return first_call


class Ops:
    """The op choices of one (backend, device) (``ops_for``: made once per backend object and device):
    ``ops.sites(tokens, dtype, host_lengths)`` gives the per-site bound callables of that token bucket;
    ``ops.kernel(op)`` says whether the backend lets ``op`` run a Triton kernel on this device at all."""

    op_names = tuple(sorted(set(SITES.values())))  # (what ``xlmrxl.stats()`` counts per op)

    def __init__(self, be: Backend, device: torch.device) -> None:
        self.be, self.device = be, device
        self._sites: dict[tuple, Sites] = {}
        self._kernel: dict[str, bool] = {}

    def kernel(self, op: str) -> bool:
        k = self._kernel.get(op)
        if k is None:
            k = self._kernel[op] = not self.be.kernel_not_supported(op, self.device)
        return k

    def sites(self, tokens: int, dtype: torch.dtype, host_lengths: bool = False) -> Sites:
        """The bound callables for a forward of ``tokens`` rows (bucketed to a power of two) in ``dtype``;
        ``host_lengths``: the forward hands the sequence lengths as host integers to attention."""
        key = (1 << (tokens - 1).bit_length() if tokens > 0 else 0, dtype, host_lengths)
        s = self._sites.get(key)
        if s is None:
            s = self._sites[key] = Sites(self.be)
        return s


_OPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backend -> {device: Ops} (not on the backend:
# a model's deepcopy / pickle copies its backend)


def ops_for(be: Backend, device: torch.device) -> Ops:
    """The op choices of ``be`` on ``device``, made once per backend object and device."""
    cache = _OPS.get(be)
    if cache is None:
        cache = _OPS[be] = {}
    ops = cache.get(device)
    if ops is None:
        ops = cache[device] = Ops(be, device)
    return ops


class Stream:
    """The residual stream of one forward; holds a pending (y, residual) pair when an int4 projection left its
    residual add to the next LayerNorm. LayerNorms come as ``(weight, bias, eps)``, dense projections as
    ``(weight, bias)`` (``LayerPlan``: no ``nn.Module`` attribute is read per call)."""

    __slots__ = ("x", "pending", "fns")

    def __init__(self, x: torch.Tensor, fns: Sites) -> None:
        self.x = x
        self.pending: torch.Tensor | None = None
        self.fns = fns

    def norm(self, ln: tuple) -> torch.Tensor:
        w, b, eps = ln
        if self.pending is not None:
            h, self.x = self.fns.norm_add(self.pending, self.x, w, b, eps)
            self.pending = None
        else:
            h, _ = self.fns.norm(self.x, None, w, b, eps)
        return h

    def add_projection(self, inp: torch.Tensor, proj: Any, int4: bool, site: str) -> None:
        """x <- x + proj(inp); ``proj``: an int4 module, or the ``(weight, bias)`` of a dense one; ``site``: "o" or
        "down"."""
        if self.pending is not None:
            self.materialize()
        if int4:
            m = proj
            fn = getattr(self.fns, site + "4")
            self.pending = fn(inp, m.qweight, m.scales, m.zeros, group_size=m.group_size, bias=m.bias, activation=None)
        elif site == "o":
            self.x = self.fns.o(inp, proj[0], proj[1], self.x)
        else:
            self.x = self.fns.down(inp, proj[0], proj[1], self.x)

    def materialize(self) -> torch.Tensor:
        if self.pending is not None:
            self.x = self.pending + self.x
            self.pending = None
        return self.x


def int4_linear(
    fn: Callable, x: torch.Tensor, m: nn.Module, bias: torch.Tensor | None, activation: str | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` (then ``activation``) through ``fn`` (a bound int4 matmul) on ``m`` (a ``QuantLinear``)."""
    return fn(x, m.qweight, m.scales, m.zeros, group_size=m.group_size, bias=bias, activation=activation)


def run_layer(plan: LayerPlan, st: Stream, attend: Callable[..., torch.Tensor], layer_idx: int) -> None:
    """One encoder layer on the stream ``st``: pre-LN attention (``attend(q, k, v, scale, layer_idx)``) and FFN,
    each added to the residual in its output GEMM's epilogue."""
    h = st.norm(plan.ln_attn)
    T = h.shape[0]
    kind = plan.qkv_kind
    if kind == "dense":
        W, b = plan.qkv
        qkv = F.linear(h, W, b)
    elif kind == "int4":
        cat = plan.qkv
        qkv = int4_linear(st.fns.qkv4, h, cat, cat.bias)
    else:
        fns = st.fns
        qkv = torch.cat(
            [int4_linear(fns.qkv4, h, m, m.bias) if is_int4(m) else F.linear(h, m.weight, m.bias) for m in plan.qkv],
            -1,
        )
    q, k, v = qkv.view(T, 3, plan.heads, plan.head_dim).unbind(1)  # one op for the three strided views
    a = attend(q, k, v, plan.scale, layer_idx)
    st.add_projection(a.reshape(T, plan.width), plan.o, plan.o_int4, "o")
    h = st.norm(plan.ln_ffn)
    if plan.up_int4:
        up = plan.up
        u = int4_linear(st.fns.up4, h, up, up.bias, "gelu")
    else:
        u = st.fns.up(h, *plan.up)
    st.add_projection(u, plan.down, plan.down_int4, "down")
