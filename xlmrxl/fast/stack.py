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
   Where no kernel is chosen (CPU, ``backend="reference"``), the op table's rule runs attention as torch SDPA per
   sequence from the host lengths (the same maths; the reference oracle keeps masks and fp32 copies).
3. **Final LayerNorm**, then scatter back to ``(B, S, H)`` (zeros at padding) only at the output, or, with
   ``return_packed=True``, the ``(T, H)`` outputs with their ``Packing``.

**CUDA graphs** (``xlmrxl.fast.graphs``): without ``output_hidden_states``, step 2-3 on the packed tokens run
through a per-bucket ``PackedGraphRunner`` when the encoder's mode says so (``set_graph_mode``); a one-token
decode step against ``StaticCache`` through a ``DecodeGraphRunner``. **Lean**: the per-layer plans
(``xlmrxl.fast.structure.LayerPlan``) hold the tensors each layer runs with and the ops are resolved once per
backend and device (``xlmrxl.fast.layer.Sites``: one bound callable per call site and token bucket), so a layer
reads no ``nn.Module`` attribute, builds no dict or key and imports nothing.

Hidden states, when asked, have transformers' semantics: entry 0 is the embeddings exactly as given, entries 1..L-1 the
residual stream after layers 0..L-2, the last entry the final LayerNorm output (zeros at padded positions except entry
0). ``chunk_size_feed_forward`` is ignored (the same maths).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from xlmrxl_kernels.flash import check_host_seqlens

from ..backend import Backend
from ..cache import DynamicCache
from ..reasons import CUDA_GRAPHS, Reason
from ..static_cache import StaticCache
from .graphs import (
    ENV_VAR,
    DecodeGraphRunner,
    PackedGraphRunner,
    in_capture,
    model_graph_pool,
    module_tensors,
    resolve_mode,
    token_buckets,
)
from .layer import Ops, Stream, ops_for, run_layer
from .packing import PackedEncoderOutput, Packing, pack
from .routing import is_causal
from .structure import Plans, layer_plans

# ``layer_callback(i, hidden_state, packing)`` of ``encoder_forward`` / ``packed_stack``
LayerCallback = Callable[[int, torch.Tensor, Packing], None]


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
    plans = layer_plans(encoder)
    ops = ops_for(be, x.device)
    # a layer_callback runs Python between the layers: such a call always runs the eager stack, never a CUDA graph
    if not output_hidden_states and layer_callback is None:
        out = _graphed_stack(encoder, plans, x, packing, ops, causal)
        if out is not None:
            return _finish(hidden_states, out, None, packing, return_packed)
    out, collected = _stack(plans, x, packing, ops, causal, bool(output_hidden_states), layer_callback)
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
    where the reference attention loops over ``packing.lengths``). Always eager (``encoder_forward`` is the entry
    that may replay it as a CUDA graph).

    Returns ``(out (T, H), collected)``: ``collected`` is None, or with ``output_hidden_states`` the list
    ``[x, residual after layer 0, ..., after layer L-2, out]`` (packed).

    ``layer_callback(i, h, packing)``, when given, is handed those same L + 1 states as they are computed (``i`` in
    transformers' numbering, ``h`` packed ``(T, H)``), without them being kept: COMET's layer mix accumulates there
    (``xlmrxl.clients``). It must not modify ``h`` (the next layer may update it in place: clone what it keeps)."""
    be = backend if isinstance(backend, Backend) else Backend(backend)
    return _stack(layer_plans(encoder), x, packing, ops_for(be, x.device), causal, output_hidden_states, layer_callback)


def _stack(
    plans: Plans,
    x: torch.Tensor,
    packing: Packing,
    ops: Ops,
    causal: bool,
    output_hidden_states: bool,
    layer_callback: LayerCallback | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    lens = packing.lengths or None  # host lengths (the graph runners have none: their tail is a padding bucket)
    if lens is not None:  # validated once per forward, on the host (no device sync)
        check_host_seqlens(x, x, packing.cu_seqlens, packing.max_seqlen, packing.max_seqlen, lens)
    fns = ops.sites(x.shape[0], x.dtype, lens is not None)
    st = Stream(x, fns)
    cu, ms = packing.cu_seqlens, packing.max_seqlen

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, layer_idx: int):
        return fns.attn(q, k, v, cu, cu, ms, ms, scale=scale, causal=causal, seqlens_q=lens, seqlens_k=lens)

    if output_hidden_states or layer_callback is not None:
        collected = [x] if output_hidden_states else None
        if layer_callback is not None:
            layer_callback(0, x, packing)
        last = len(plans) - 1
        for i, plan in enumerate(plans):
            run_layer(plan, st, attend, i)
            if i < last:
                h = st.materialize()
                if collected is not None:
                    collected.append(h)
                if layer_callback is not None:
                    layer_callback(i + 1, h, packing)
        out = st.norm(plans.final)
        if collected is not None:
            collected.append(out)
        if layer_callback is not None:
            layer_callback(len(plans), out, packing)
        return out, collected
    for i, plan in enumerate(plans):
        run_layer(plan, st, attend, i)
    return st.norm(plans.final), None


# ---------------------------------------------------------------------------------------------------------------
# CUDA graphs (xlmrxl.fast.graphs): the packed stack per (token bucket, segment bucket), the StaticCache decode step
# ---------------------------------------------------------------------------------------------------------------
def set_graph_mode(encoder: nn.Module, mode: bool | str | None = "auto", *, max_tokens: int | None = None) -> None:
    """Use CUDA graphs for ``encoder``'s fused calls: ``"auto"`` (on CUDA, when the call fits the buckets), True,
    False, ``"emulate"`` (the bucketed static-buffer path without capture, for CPU tests); None / ``"auto"`` read
    ``XLMRXL_CUDA_GRAPHS`` now (once). Drops every captured graph; ``max_tokens``: the largest token bucket
    (default 4096)."""
    resolved = resolve_mode(mode)
    d = encoder.__dict__
    if max_tokens is not None:
        token_buckets(int(max_tokens))  # (validates)
        d["_xlmrxl_graph_max_tokens"] = int(max_tokens)
    for runner in d.get("_xlmrxl_graph_runners", {}).values():
        runner.reset()
    d["_xlmrxl_graph_runners"] = _Runners()
    d["_xlmrxl_graph_mode"] = resolved
    d["_xlmrxl_graph_reasons"] = ()


def graph_mode(encoder: nn.Module) -> bool | str:
    """The effective CUDA-graph mode of ``encoder`` (``XLMRXL_CUDA_GRAPHS`` is read at the first call if never set)."""
    mode = encoder.__dict__.get("_xlmrxl_graph_mode")
    if mode is None:
        set_graph_mode(encoder, None)
        mode = encoder.__dict__["_xlmrxl_graph_mode"]
    return mode


def graph_reasons(encoder: nn.Module) -> tuple[Reason, ...]:
    """Why the last packed call of ``encoder`` ran eagerly instead of through CUDA graphs (empty: it did not)."""
    return encoder.__dict__.get("_xlmrxl_graph_reasons", ())


class _Runners(dict):
    """Graph runners (closures, device buffers, graphs): a copy of the model or cache (deepcopy, pickle) starts
    without any and captures its own."""

    def __reduce_ex__(self, protocol: int):
        return (_Runners, ())


class _Holder:
    __slots__ = ("plans",)


def _graphed_stack(
    encoder: nn.Module, plans: Plans, x: torch.Tensor, packing: Packing, ops: Ops, causal: bool
) -> torch.Tensor | None:
    """The packed stack through ``PackedGraphRunner`` (captured, or emulated), or None: run it eagerly (the
    reasons in ``graph_reasons(encoder)``)."""
    d = encoder.__dict__
    mode = d.get("_xlmrxl_graph_mode")
    if mode is None:
        mode = graph_mode(encoder)
    if mode is False:
        return None
    dev = x.device
    if mode != "emulate":
        if dev.type != "cuda":
            if mode is True:
                resolve_device_error(dev)
            d["_xlmrxl_graph_reasons"] = (Reason(CUDA_GRAPHS, f"the tensors are on {dev.type}, not CUDA"),)
            return None
        if not ops.kernel("attention_varlen"):
            d["_xlmrxl_graph_reasons"] = (
                Reason(
                    CUDA_GRAPHS,
                    "attention runs the PyTorch reference, which reads the sequence lengths on the host",
                ),
            )
            return None
        if in_capture():
            return None  # someone else's capture records us: no capture inside a capture
    key = (ops, x.dtype, causal)
    runners = d.get("_xlmrxl_graph_runners")
    if runners is None:
        runners = d["_xlmrxl_graph_runners"] = _Runners()
    runner = runners.get(key)
    if runner is None:
        holder = _Holder()
        kernel = ops.kernel("attention_varlen")

        def run(xs: torch.Tensor, cu: torch.Tensor, max_seqlen: int) -> torch.Tensor:
            lengths = () if kernel else tuple(torch.diff(cu).tolist())  # (emulate with the reference attention)
            p = Packing(cu.shape[0] - 1, 0, None, cu, max_seqlen, lengths)
            return _stack(holder.plans, xs, p, ops, causal, False)[0]

        pool = model_graph_pool(encoder) if dev.type == "cuda" and mode != "emulate" else None
        runner = PackedGraphRunner(
            run,
            hidden_size=x.shape[1],
            dtype=x.dtype,
            mode=mode,
            pool=pool,
            tensors=module_tensors(encoder),  # a graph reads addresses: every storage is compared per call
            max_tokens=d.get("_xlmrxl_graph_max_tokens", 4096),
        )
        runner.holder = holder
        runners[key] = runner
    T, B = x.shape[0], packing.batch
    if runner.bucket(T, B, packing.max_seqlen) is None:
        d["_xlmrxl_graph_reasons"] = (
            Reason(
                CUDA_GRAPHS,
                f"{T} tokens in {B} sequences exceed the CUDA-graph buckets (max_tokens={runner.ladder[-1]}, "
                f"max_segments={runner.max_segments})",
            ),
        )
        return None
    d["_xlmrxl_graph_reasons"] = ()
    runner.holder.plans = plans
    return runner(x, packing.cu_seqlens, packing.max_seqlen, key=plans.generation)


def resolve_device_error(dev: torch.device) -> None:
    raise ValueError(
        f"cuda_graphs=True but the tensors are on {dev.type}; CUDA graphs need a CUDA device. Use "
        f"cuda_graphs='auto' (graphs only on CUDA) or {ENV_VAR}=emulate to run the bucketed path here"
    )


def _graphed_decode(
    encoder: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, cache: StaticCache, be
) -> torch.Tensor | None:
    """One cached decode step (S = 1) against an xlmrxl ``StaticCache`` through ``DecodeGraphRunner``, or None."""
    mode = encoder.__dict__.get("_xlmrxl_graph_mode")
    if mode is None:
        mode = graph_mode(encoder)
    if mode is False or (mode != "emulate" and (hidden_states.device.type != "cuda" or in_capture())):
        return None
    if any(k is None for k in cache.keys) or hidden_states.shape[0] != cache.batch_size:
        return None
    runners = cache.__dict__.get("_xlmrxl_decode_runners")
    if runners is None:
        runners = cache.__dict__["_xlmrxl_decode_runners"] = _Runners()
    key = (encoder, be, hidden_states.dtype)
    runner = runners.get(key)
    if runner is None:

        def step(hidden: torch.Tensor, mask: torch.Tensor | None, view: Any) -> torch.Tensor:
            return _decoder_forward(encoder, hidden, mask, view, be, False, None)[0]

        dev = hidden_states.device
        pool = model_graph_pool(encoder) if dev.type == "cuda" and mode != "emulate" else None
        runner = runners[key] = DecodeGraphRunner(
            step,
            cache,
            hidden_size=hidden_states.shape[-1],
            dtype=hidden_states.dtype,
            mode=mode,
            pool=pool,
            tensors=module_tensors(encoder),
        )
    return runner(hidden_states, attention_mask, key=layer_plans(encoder).generation)


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
    if (
        type(cache) is StaticCache
        and hidden_states.shape[1] == 1
        and not output_hidden_states
        and (attention_mask is None or attention_mask.dim() == 2)
    ):
        last = _graphed_decode(encoder, hidden_states, attention_mask, cache, be)
        if last is not None:
            return last, None
    return _decoder_forward(encoder, hidden_states, attention_mask, cache, be, output_hidden_states, cache_position)


def _decoder_forward(
    encoder: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Any,
    be: Backend,
    output_hidden_states: bool | None,
    cache_position: torch.Tensor | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    B, S, H = hidden_states.shape
    past = int(cache.get_seq_length())
    if attention_mask is not None and tuple(attention_mask.shape) != (B, past + S):
        raise ValueError(
            f"attention_mask must be (batch, past + seq) = ({B}, {past + S}) with {past} cached "
            f"positions, got {tuple(attention_mask.shape)}"
        )
    x = hidden_states.reshape(B * S, H)
    fns = ops_for(be, x.device).sites(B * S, x.dtype)
    st = Stream(x, fns)
    compact = not _copies_states(cache, past)
    extra = () if cache_position is None else ({"cache_position": cache_position},)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, layer_idx: int):
        T, nh, d = q.shape
        q4, k4, v4 = (t.reshape(B, S, nh, d).transpose(1, 2) for t in (q, k, v))
        if compact:  # the cache keeps what it is given: hand it compact K/V, not views pinning the QKV buffer
            k4, v4 = k4.contiguous(), v4.contiguous()
        keys, values = cache.update(k4, v4, layer_idx, *extra)
        o = fns.cached_attn(q4, keys, values, attention_mask, scale=scale, causal=True)
        return o.transpose(1, 2).reshape(T, nh, d)

    collected = [hidden_states] if output_hidden_states else None
    plans = layer_plans(encoder)
    for i, plan in enumerate(plans):
        run_layer(plan, st, attend, i)
        if output_hidden_states and i < len(plans) - 1:
            collected.append(st.materialize().reshape(B, S, H))
    last = st.norm(plans.final).reshape(B, S, H)
    if output_hidden_states:
        collected.append(last)
        return last, tuple(collected)
    return last, None


def _copies_states(cache: Any, past: int) -> bool:
    """Does ``cache.update`` copy the states it is given (so strided views of the QKV output may be handed over)?
    xlmrxl's ``StaticCache`` always (``cache_update`` writes its own buffers); xlmrxl's ``DynamicCache`` once it
    holds tokens (``torch.cat``); anything else is not assumed to."""
    if type(cache) is StaticCache or getattr(cache, "copies_states", False):
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
