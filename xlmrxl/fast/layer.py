"""One fused encoder layer on packed tokens: the op table of a (backend, device), the residual stream with its
fused add + LayerNorm, the attention call (kernel or per-sequence reference), and the layer itself (q/k/v GEMM,
attention, output projection + residual, GELU FFN + residual). ``xlmrxl.fast.stack`` runs it layer after layer."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backend import Backend, Impl
from .packing import Packing
from .structure import LayerPlan, is_int4


class Ops:
    """The op functions for one (backend, device), resolved through the backend once (``ops_for``: cached on the
    backend), not once per layer or call; ``ops.kernel(name)`` says whether ``name`` resolved to its kernel."""

    def __init__(self, be: Backend, device: torch.device) -> None:
        self.be, self.device = be, device
        self.impls: dict[str, Impl] = {}

    def kernel(self, name: str) -> bool:
        return self._impl(name).kernel

    def _impl(self, name: str) -> Impl:
        impl = self.impls.get(name)
        if impl is None:
            impl = self.impls[name] = self.be.resolve(name, self.device)
        return impl

    def __getattr__(self, name: str) -> Callable:
        fn = self._impl(name).fn
        setattr(self, name, fn)
        return fn


_OPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backend -> {device: Ops} (not on the backend:
# a model's deepcopy / pickle copies its backend)


def ops_for(be: Backend, device: torch.device) -> Ops:
    """The resolved ops of ``be`` on ``device``, made once per backend object and device."""
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

    __slots__ = ("x", "pending", "ops", "add_layernorm", "linear_residual")

    def __init__(self, x: torch.Tensor, ops: Ops) -> None:
        self.x = x
        self.pending: torch.Tensor | None = None
        self.ops = ops
        self.add_layernorm, self.linear_residual = ops.add_layernorm, ops.linear_residual

    def norm(self, ln: tuple) -> torch.Tensor:
        w, b, eps = ln
        if self.pending is not None:
            h, self.x = self.add_layernorm(self.pending, self.x, w, b, eps)
            self.pending = None
        else:
            h, _ = self.add_layernorm(self.x, None, w, b, eps)
        return h

    def add_projection(self, inp: torch.Tensor, proj: Any, int4: bool) -> None:
        """x <- x + proj(inp); ``proj``: an int4 module, or the ``(weight, bias)`` of a dense one."""
        if self.pending is not None:
            self.materialize()
        if int4:
            self.pending = int4_linear(self.ops, inp, proj, proj.bias)
        else:
            self.x = self.linear_residual(inp, proj[0], proj[1], self.x)

    def materialize(self) -> torch.Tensor:
        if self.pending is not None:
            self.x = self.pending + self.x
            self.pending = None
        return self.x


def int4_linear(
    ops: Ops, x: torch.Tensor, m: nn.Module, bias: torch.Tensor | None, activation: str | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` (then ``activation``) through the int4 matmul of ``m`` (a ``QuantLinear``)."""
    return ops.int4_matmul(x, m.qweight, m.scales, m.zeros, group_size=m.group_size, bias=bias, activation=activation)


def packed_attention(
    ops: Ops,
    kernel: bool,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packing: Packing,
    scale: float,
    causal: bool,
    check_lengths: bool = False,
) -> torch.Tensor:
    """Varlen attention on the packed (T, heads, D) views (``kernel``: the backend resolved ``attention_varlen`` to
    its kernel). Where the backend picks the PyTorch reference (CPU, or backend='reference'), the same maths runs as
    torch SDPA per sequence instead: ``attention_varlen_ref`` is an oracle (masks, fp32 copies, a host sync per call)
    and would cost more than all the GEMMs on a CPU.

    ``check_lengths`` (the first layer of a forward: every layer shares the packing) hands the packing's host
    lengths to the op as ``seqlens_q`` / ``seqlens_k``, which validates them against ``cu_seqlens``' shape, the
    packed rows and ``max_seqlen`` in Python, without a device sync (so also inside CUDA-graph capture; the graph
    runners pass no host lengths: their tail sequence is a padding bucket)."""
    if kernel or not packing.lengths:
        ms = packing.max_seqlen
        cu = packing.cu_seqlens
        lens = packing.lengths if check_lengths and packing.lengths else None
        return ops.attention_varlen(q, k, v, cu, cu, ms, ms, scale=scale, causal=causal, seqlens_q=lens, seqlens_k=lens)
    T, nh, d = q.shape
    B, S = packing.batch, packing.seqlen
    if packing.indices is None and B * S == T:  # equal lengths: one batched call on (B, heads, S, D) views
        qs, ks, vs = (t.reshape(B, S, nh, d).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, is_causal=causal and S > 1)
        return o.transpose(1, 2).reshape(T, nh, d)
    out = q.new_empty((T, nh, d))
    start = 0
    for n in packing.lengths:
        if n:
            sl = slice(start, start + n)
            qs, ks, vs = (t[sl].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, is_causal=causal and n > 1)
            out[sl] = o[0].transpose(0, 1)
        start += n
    return out


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
        qkv = int4_linear(st.ops, h, cat, cat.bias)
    else:
        o = st.ops
        qkv = torch.cat(
            [int4_linear(o, h, m, m.bias) if is_int4(m) else F.linear(h, m.weight, m.bias) for m in plan.qkv], -1
        )
    q, k, v = qkv.view(T, 3, plan.heads, plan.head_dim).unbind(1)  # one op for the three strided views
    a = attend(q, k, v, plan.scale, layer_idx)
    st.add_projection(a.reshape(T, plan.width), plan.o, plan.o_int4)
    h = st.norm(plan.ln_ffn)
    if plan.up_int4:
        up = plan.up
        u = int4_linear(st.ops, h, up, up.bias, "gelu")
    else:
        u = st.ops.linear_gelu(h, *plan.up)
    st.add_projection(u, plan.down, plan.down_int4)
