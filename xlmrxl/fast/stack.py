"""The fused layer stack: on packed tokens (``encoder_forward``) and with a KV cache (``decoder_forward``).

``encoder`` is any module laid out like transformers' ``XLMRobertaXLEncoder``
(``encoder.layer[i].attention.self.query``, ..., ``encoder.LayerNorm``): ours or transformers' own (4.56.x and 5.x
keep these names), which is how ``xlmrxl.hf`` reuses this file.
Callers run these only where ``xlmrxl.fast.route`` chose the fused path for the same call (the route
also refreshes the cached structure check and per-layer plans).

What one packed forward does (``T`` = number of real tokens):

1. **Pack once** (``xlmrxl.fast.packing``): the real tokens are gathered into ``(T, H)``; the per-row lengths are read
   on the host once per forward (one sync), never per layer. Without padding nothing is gathered.
2. **Per layer**, on ``(T, H)`` tensors only: ``h = LN_attn(x)`` -> one QKV GEMM ``(T, 3H)`` against the fused weight
   (``xlmrxl.fast.qkv``) -> ``attention_varlen`` on strided q/k/v views of it -> ``x = x + a @ Wo^T + bo``
   (``linear_residual``) -> ``h = LN_ffn(x)`` -> ``u = gelu(h @ Wi^T + bi)`` (``linear_gelu``) ->
   ``x = x + u @ Wd^T + bd`` (``linear_residual``). Residual adds live in the GEMM epilogues. int4 ``QuantLinear``
   projections (``backend.int4_matmul``: bias and GELU in its epilogue, no residual) leave their output pending and
   the next ``add_layernorm`` fuses the residual add with the following LayerNorm, across the layer boundary too.
   Where the backend resolves attention to the PyTorch reference (CPU, ``backend="reference"``), attention runs as
   torch SDPA per sequence (the same maths; the reference oracle keeps masks and fp32 copies).
3. **Final LayerNorm**, then scatter back to ``(B, S, H)`` (zeros at padding) only at the output, or, with
   ``return_packed=True``, the ``(T, H)`` outputs with their ``Packing``.

Hidden states, when asked, have transformers' semantics: entry 0 is the embeddings exactly as given, entries 1..L-1 the
residual stream after layers 0..L-2, the last entry the final LayerNorm output (zeros at padded positions except entry
0). ``chunk_size_feed_forward`` is ignored (the same maths).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backend import Backend, Impl
from ..cache import DynamicCache
from ..static_cache import StaticCache
from .packing import PackedEncoderOutput, Packing, pack
from .qkv import fused_qkv_module
from .routing import is_causal
from .structure import LayerPlan, is_int4, layer_plans

# ``layer_callback(i, hidden_state, packing)`` of ``encoder_forward`` / ``packed_stack``
LayerCallback = Callable[[int, torch.Tensor, Packing], None]


class _Ops:
    """The op functions of one forward, resolved through the backend once each (not once per layer and call);
    ``ops.kernel(name)`` says whether the backend resolved ``name`` to its kernel or to the reference."""

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


class _Stream:
    """The residual stream of one forward; holds a pending (y, residual) pair when an int4 projection left its
    residual add to the next LayerNorm."""

    def __init__(self, x: torch.Tensor, ops: _Ops) -> None:
        self.x = x
        self.pending: torch.Tensor | None = None
        self.ops = ops

    def norm(self, ln: nn.LayerNorm) -> torch.Tensor:
        if self.pending is not None:
            h, self.x = self.ops.add_layernorm(self.pending, self.x, ln.weight, ln.bias, ln.eps)
            self.pending = None
        else:
            h, _ = self.ops.add_layernorm(self.x, None, ln.weight, ln.bias, ln.eps)
        return h

    def add_projection(self, inp: torch.Tensor, lin, int4: bool) -> None:
        """x <- x + lin(inp)."""
        if self.pending is not None:
            self.materialize()
        if int4:
            self.pending = _int4(self.ops, inp, lin, lin.bias)
        else:
            self.x = self.ops.linear_residual(inp, lin.weight, lin.bias, self.x)

    def materialize(self) -> torch.Tensor:
        if self.pending is not None:
            self.x = self.pending + self.x
            self.pending = None
        return self.x


def _int4(ops: _Ops, x: torch.Tensor, m: nn.Module, bias: torch.Tensor | None, activation: str | None = None):
    return ops.int4_matmul(x, m.qweight, m.scales, m.zeros, group_size=m.group_size, bias=bias, activation=activation)


def _attention(
    ops: _Ops, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float, causal: bool
) -> torch.Tensor:
    """Varlen attention on the packed (T, heads, D) views. Where the backend picks the PyTorch reference (CPU, or
    backend='reference'), the same maths runs as torch SDPA per sequence instead: ``attention_varlen_ref`` is an
    oracle (masks, fp32 copies, a host sync per call) and would cost more than all the GEMMs on a CPU."""
    if ops.kernel("attention_varlen") or not packing.lengths:
        return ops.attention_varlen(
            q,
            k,
            v,
            packing.cu_seqlens,
            packing.cu_seqlens,
            packing.max_seqlen,
            packing.max_seqlen,
            scale=scale,
            causal=causal,
        )
    T, nh, d = q.shape
    if packing.indices is None:  # equal lengths: one batched call on (B, heads, S, D) views
        B, S = packing.batch, packing.seqlen
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


def _layer(plan: LayerPlan, st: _Stream, attend, layer_idx: int) -> None:
    ops = st.ops
    T = st.x.shape[0]
    h = st.norm(plan.ln_attn)
    kind, *what = fused_qkv_module(plan.sa)
    if kind == "dense":
        W, b = what
        qkv = F.linear(h, W, b)
    elif kind == "int4":
        cat = what[0]
        qkv = _int4(ops, h, cat, cat.bias)
    else:
        sa = plan.sa
        outs = []
        for m in (sa.query, sa.key, sa.value):
            outs.append(_int4(ops, h, m, m.bias) if is_int4(m) else F.linear(h, m.weight, m.bias))
        qkv = torch.cat(outs, dim=-1)
    width = qkv.shape[-1] // 3
    d = width // plan.heads
    qkv = qkv.view(T, 3, plan.heads, d)
    a = attend(qkv[:, 0], qkv[:, 1], qkv[:, 2], plan.scale or d**-0.5, layer_idx)
    st.add_projection(a.reshape(T, width), plan.o, plan.o_int4)
    h = st.norm(plan.ln_ffn)
    up = plan.up
    u = _int4(ops, h, up, up.bias, "gelu") if plan.up_int4 else ops.linear_gelu(h, up.weight, up.bias)
    st.add_projection(u, plan.down, plan.down_int4)


def encoder_forward(
    encoder: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    backend: Backend | str | None,
    *,
    output_hidden_states: bool | None = False,
    return_packed: bool = False,
    causal: bool = None,
    layer_callback: LayerCallback | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None] | PackedEncoderOutput:
    """Run ``encoder``'s layer stack and final LayerNorm on the packed real tokens (see the module docstring).

    ``backend``: an ``xlmrxl.backend.Backend`` or a backend name (None: the default). ``causal``: decoder
    self-attention; None reads ``encoder.config.is_decoder`` (or ``encoder.layer[0].is_decoder``).
    ``layer_callback``: see ``packed_stack`` (a fully padded batch calls it with ``(0, H)`` zeros for every state).
    Returns ``(last_hidden_state, all_hidden_states_or_None)`` in (B, S, H), or with ``return_packed=True`` a
    ``PackedEncoderOutput`` with (T, H) tensors and the ``Packing`` to unpack them."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq, hidden), got shape {tuple(hidden_states.shape)}")
    be = backend if isinstance(backend, Backend) else Backend(backend)
    causal = is_causal(encoder) if causal is None else bool(causal)
    x, packing = pack(hidden_states, attention_mask)
    if packing.num_tokens == 0:  # every row fully padded (or no columns): nothing to compute
        zeros = x.new_zeros((0, hidden_states.shape[-1]))
        collected = [zeros] * (len(encoder.layer) + 1) if output_hidden_states else None
        for i in range(len(encoder.layer) + 1) if layer_callback is not None else ():
            layer_callback(i, zeros, packing)
        return _finish(hidden_states, zeros, collected, packing, return_packed)
    # a layer_callback runs Python between the layers: such a call always runs this eager stack, never a CUDA graph
    out, collected = packed_stack(
        encoder, x, packing, be, causal=causal, output_hidden_states=output_hidden_states, layer_callback=layer_callback
    )
    return _finish(hidden_states, out, collected, packing, return_packed)


def packed_stack(
    encoder: nn.Module,
    x: torch.Tensor,
    packing: Packing,
    backend: Backend,
    *,
    causal: bool,
    output_hidden_states: bool = False,
    layer_callback: LayerCallback | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The packed layer stack and final LayerNorm on the ``(T, H)`` real tokens ``x`` delimited by
    ``packing.cu_seqlens``: the unit that runs once per packed forward (no packing, no host sync inside except
    where the reference attention loops over ``packing.lengths``).

    Returns ``(out (T, H), collected)``: ``collected`` is None, or with ``output_hidden_states`` the list
    ``[x, residual after layer 0, ..., after layer L-2, out]`` (packed).

    ``layer_callback(i, h, packing)``, when given, is handed those same L + 1 states as they are computed (``i`` in
    transformers' numbering, ``h`` packed ``(T, H)``), without them being kept: COMET's layer mix accumulates there
    (``xlmrxl.clients``). It must not modify ``h`` (the next layer may update it in place: clone what it keeps). A
    callback runs Python between the layers, so this call is always eager (never a captured CUDA graph)."""
    ops = _Ops(backend, x.device)
    st = _Stream(x, ops)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, layer_idx: int):
        return _attention(ops, q, k, v, packing, scale, causal)

    plans = layer_plans(encoder)
    collected = [x] if output_hidden_states else None
    if layer_callback is not None:
        layer_callback(0, x, packing)
    for i, plan in enumerate(plans):
        _layer(plan, st, attend, i)
        if output_hidden_states and i < len(plans) - 1:
            collected.append(st.materialize())
        if layer_callback is not None and i < len(plans) - 1:
            layer_callback(i + 1, st.materialize(), packing)
    out = st.norm(encoder.LayerNorm)
    if output_hidden_states:
        collected.append(out)
    if layer_callback is not None:
        layer_callback(len(plans), out, packing)
    return out, collected


def decoder_forward(
    encoder: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Any,
    backend: Backend | str | None,
    *,
    output_hidden_states: bool | None = False,
    cache_position: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Causal self-attention with a KV cache (incremental decoding, or a prefill that fills the cache).

    ``hidden_states`` (B, S, H) are the new tokens' embeddings; ``attention_mask`` the 2D (B, past + S) keep mask
    (left padding: zeros over the pads of the cached prefix and of the new tokens) or None (every key is real; pass
    None for an all-ones mask, so no mask is read per layer); ``cache`` anything with
    ``update(key_states, value_states, layer_idx[, cache_kwargs]) -> (keys, values)`` in (B, heads, K, D) and
    ``get_seq_length()`` (xlmrxl's ``DynamicCache`` / ``StaticCache``, transformers' ``DynamicCache``; pass
    ``.self_attention_cache`` of an encoder-decoder cache). ``cache_position``, when given, is handed to ``update``
    as ``cache_kwargs={"cache_position": ...}`` (as the exact path does).

    Nothing is packed (the cache is laid out per row). Per layer, on the ``B * S`` new rows only: one fused-QKV GEMM,
    ``cache.update`` with this step's K/V (``StaticCache``: the compiled ``cache_update`` op writes strided views of
    the QKV output in place; other caches get compact copies, so they never pin the QKV buffer),
    ``backend.attention(q, K, V, mask, causal=True)`` with the S new queries against the cache's filled prefix
    (queries aligned to the end of the keys; the kernel's decode path serves S <= 4), output projection + residual,
    GELU FFN + residual. The cached length is read once per call (a host int for xlmrxl's caches): no host sync per
    layer. Query rows that see no real key (left-padding positions of a prefill) come out of the kernel as zeros (of
    the reference route: attending to their own key); only real positions are meaningful, as on the exact path.
    Returns ``(last_hidden_state, all_hidden_states_or_None)``, both (B, S, H) per entry."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq, hidden), got shape {tuple(hidden_states.shape)}")
    be = backend if isinstance(backend, Backend) else Backend(backend)
    B, S, H = hidden_states.shape
    past = int(cache.get_seq_length())
    if attention_mask is not None and tuple(attention_mask.shape) != (B, past + S):
        raise ValueError(
            f"attention_mask must be (batch, past + seq) = ({B}, {past + S}) with {past} cached "
            f"positions, got {tuple(attention_mask.shape)}"
        )
    x = hidden_states.reshape(B * S, H)
    ops = _Ops(be, x.device)
    st = _Stream(x, ops)
    compact = not _copies_states(cache, past)
    extra = () if cache_position is None else ({"cache_position": cache_position},)
    sdpa = None if ops.kernel("attention") else _SdpaCausal(attention_mask, B, S, past, x.device)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, layer_idx: int):
        T, nh, d = q.shape
        q4, k4, v4 = (t.reshape(B, S, nh, d).transpose(1, 2) for t in (q, k, v))
        if compact:  # the cache keeps what it is given: hand it compact K/V, not views pinning the QKV buffer
            k4, v4 = k4.contiguous(), v4.contiguous()
        keys, values = cache.update(k4, v4, layer_idx, *extra)
        if sdpa is not None:
            o = sdpa(q4, keys, values, scale)
        else:
            o = ops.attention(q4, keys, values, attention_mask, scale=scale, causal=True)
        return o.transpose(1, 2).reshape(T, nh, d)

    collected = [hidden_states] if output_hidden_states else None
    plans = layer_plans(encoder)
    for i, plan in enumerate(plans):
        _layer(plan, st, attend, i)
        if output_hidden_states and i < len(plans) - 1:
            collected.append(st.materialize().reshape(B, S, H))
    last = st.norm(encoder.LayerNorm).reshape(B, S, H)
    if output_hidden_states:
        collected.append(last)
        return last, tuple(collected)
    return last, None


class _SdpaCausal:
    """Where the backend picks the PyTorch reference for ``attention`` (CPU, ``backend="reference"``), the cached
    causal attention runs as torch SDPA with a boolean keep mask built once per forward (not per layer):
    ``attention_ref`` is an oracle (fp32 copies of the whole cache, explicit masks) and SDPA is the same maths, as the
    exact path computes it. No mask at all for a one-token step without padding; ``is_causal`` for a prefill without
    padding. A query row that would see no key (a pad position of a left-padded prefill) is let see its own key, so
    no SDPA backend can return NaN for it; no real position ever reads a pad position's output."""

    def __init__(
        self, mask2d: torch.Tensor | None, B: int, S: int, past: int, device: torch.device | str | None
    ) -> None:
        self.is_causal = mask2d is None and S > 1 and past == 0
        keep = None
        if mask2d is not None or (S > 1 and past > 0):
            K = past + S
            i = torch.arange(S, device=device)[:, None]
            keep = torch.arange(K, device=device)[None, :] <= i + past  # (S, K) causal, aligned to the end
            if mask2d is not None:
                keep = keep[None, None] & (mask2d != 0)[:, None, None, :]  # (B, 1, S, K)
                own = torch.zeros_like(keep[0, 0])
                own[:, past:] = torch.eye(S, dtype=torch.bool, device=device)
                keep = keep | (own & ~keep.any(dim=-1, keepdim=True))
        self.keep = keep

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep, is_causal=self.is_causal, scale=scale)


def _copies_states(cache: Any, past: int) -> bool:
    """Does ``cache.update`` copy the states it is given (so strided views of the QKV output may be handed over)?
    xlmrxl's ``StaticCache`` always (``cache_update`` writes its own buffers); xlmrxl's ``DynamicCache`` once it
    holds tokens (``torch.cat``); anything else is not assumed to."""
    if type(cache) is StaticCache:
        return True
    return type(cache) is DynamicCache and past > 0


def _finish(
    hidden_states: torch.Tensor,
    out: torch.Tensor,
    collected: list[torch.Tensor] | None,
    packing: Packing,
    return_packed: bool,
):
    if return_packed:
        return PackedEncoderOutput(out, tuple(collected) if collected is not None else None, packing)
    last = packing.unpack(out)
    if collected is None:
        return last, None
    # entry 0 is the embeddings exactly as given (padded positions included), as transformers returns it
    all_hs = (hidden_states,) + tuple(packing.unpack(t) for t in collected[1:-1]) + (last,)
    return last, all_hs
