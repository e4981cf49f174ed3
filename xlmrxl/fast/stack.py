"""The fused layer stack on packed tokens (``encoder_forward``) and its CUDA-graph modes (KV cache: ``decode``).

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

**CUDA graphs** (``xlmrxl.fast.graphs``): step 2-3 on the packed tokens (with the hidden states and COMET's layer
mix as further outputs of the graph, when asked) run through a per-bucket ``PackedGraphRunner`` when the encoder's
mode says so (``set_graph_mode``); a one-token decode step against ``StaticCache`` through a ``DecodeGraphRunner``.
**Lean**: the per-layer plans (``xlmrxl.fast.structure.LayerPlan``) hold the tensors each layer runs with and the
ops are resolved once per backend and device (``xlmrxl.fast.layer.Sites``: one bound callable per call site and
token bucket), so a layer reads no ``nn.Module`` attribute, builds no dict or key and imports nothing.

Hidden states, when asked, have transformers' semantics: entry 0 is the embeddings exactly as given, entries 1..L-1 the
residual stream after layers 0..L-2, the last entry the final LayerNorm output (zeros at padded positions except entry
0). ``chunk_size_feed_forward`` is ignored (the same maths).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import DEBUG
from typing import Any

import torch
import torch.nn as nn

from xlmrxl_kernels._attn_checks import check_host_seqlens

from .. import record
from ..backend import Backend
from ..reasons import CUDA_GRAPHS, Reason, describe
from . import decode
from .graphs import (  # noqa: F401  (the encoder's graph API, here too)
    ENV_VAR,
    PackedGraphRunner,
    _Runners,
    graph_mode,
    graph_reasons,
    in_capture,
    model_graph_pool,
    module_tensors,
    set_graph_mode,
)
from .layer import Ops, Stream, ops_for, run_layer
from .packing import PackedEncoderOutput, Packing
from .routing import CACHED, EXACT, Route, is_causal
from .structure import _DATA_PTR, VERSION, Plans, layer_plans


def _plans(encoder: nn.Module) -> Plans:
    """``layer_plans(encoder)``, its cached answer read here when nothing was assigned and no q/k/v storage moved."""
    d = encoder.__dict__
    cached, st = d.get("_xlmrxl_plans"), d.get("_xlmrxl_structure")
    v = VERSION[0]
    if cached is not None and cached[0] is st and cached[1] == v and st.version == v:
        if tuple(map(_DATA_PTR, st.params)) == cached[2]:
            return cached[3]
    return layer_plans(encoder)


# ``layer_callback(i, hidden_state, packing)`` of ``encoder_forward`` / ``packed_stack``
LayerCallback = Callable[[int, torch.Tensor, Packing], None]


def run(
    encoder: nn.Module,
    route: Route,
    hidden_states: torch.Tensor,
    backend: Backend | str | None,
    *,
    exact: Callable[[], Any] | None = None,
    cache: Any = None,
    output_hidden_states: bool = False,
    cache_position: torch.Tensor | None = None,
    return_packed: bool = False,
    layer_callback: LayerCallback | None = None,
) -> Any:
    """Run ``route`` (``xlmrxl.fast.route``'s decision for this call) on ``encoder`` (see the module docstring).

    ``exact``: the caller's exact execution, called without arguments when the route is ``EXACT`` (None: an
    ``EXACT`` route is a ValueError naming its reasons). ``cache``: the KV cache a ``CACHED`` route drives (an
    encoder-decoder cache's ``self_attention_cache`` is used). ``return_packed`` / ``layer_callback``: of
    ``stack.encoder_forward`` (packed route only)."""
    path = route.path
    if not torch.compiler.is_compiling():  # (torch.compile traces this call: nothing recorded inside the graph)
        record.ROUTES[path] += 1  # (counting: integer increments, no call)
        d = encoder.__dict__
        d["_xlmrxl_last_route"] = (path, route.not_supported, route.wanted)
        d["_xlmrxl_last_graph"] = None
        if path == EXACT:
            record.count_fallbacks(route)
        if record.logger.isEnabledFor(DEBUG):
            record.log_call(route, hidden_states)
    if path == EXACT:
        if exact is None:
            raise ValueError(f"this call cannot take the fused path: {describe(route.reasons)}")
        return exact()
    be = backend if isinstance(backend, Backend) else Backend(backend)
    if path == CACHED:
        self_cache = getattr(cache, "self_attention_cache", cache)
        return decode.decoder_forward(
            encoder,
            hidden_states,
            route.mask,
            self_cache,
            be,
            output_hidden_states=bool(output_hidden_states),
            cache_position=cache_position,
        )
    return encoder_forward(
        encoder,
        hidden_states,
        route.mask,
        be,
        output_hidden_states=bool(output_hidden_states),
        return_packed=return_packed,
        causal=route.causal,
        layer_callback=layer_callback,
    )


def pack(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, Packing]:
    """Gather the real tokens of ``hidden_states`` (B, S, H) per the 2D ``attention_mask`` (nonzero = real).

    One host sync (the per-row lengths) when a mask is given; none without one."""
    B, S = hidden_states.shape[:2]
    dev = hidden_states.device
    if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"attention_mask must have shape (batch, seq) = ({B}, {S}) to match the hidden states, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask is None or S == 0:  # (no columns: every row is empty, nothing to read)
        cu = torch.arange(B + 1, dtype=torch.int32, device=dev) * S
        p = Packing(B, S, None, cu, S, (S,) * B)
        return hidden_states.reshape(B * S, *hidden_states.shape[2:]), p
    keep = attention_mask.to(device=dev) != 0
    lengths = keep.sum(dim=1, dtype=torch.int32)
    lens = lengths.tolist()  # the one host sync of the forward
    total = sum(lens)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.cumsum(lengths, dim=0, dtype=torch.int32)
    if total == B * S:
        p = Packing(B, S, None, cu, S, tuple(lens))
    else:
        # Stable sort puts real positions first, in order: their indices without a second sync (nonzero would sync).
        order = torch.argsort((~keep).reshape(-1).to(torch.int8), stable=True)
        p = Packing(B, S, order[:total], cu, max(lens) if lens else 0, tuple(lens))
    flat = hidden_states.reshape(B * S, *hidden_states.shape[2:])  # (Packing.pack, inline)
    return (flat if p.indices is None else flat.index_select(0, p.indices)), p


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
    if x.shape[0] == 0:  # every row fully padded (or no columns): nothing to compute
        zeros = x.new_zeros((0, hidden_states.shape[-1]))
        collected = [zeros] * (len(encoder.layer) + 1) if output_hidden_states else None
        for i in range(len(encoder.layer) + 1) if layer_callback is not None else ():
            layer_callback(i, zeros, packing)
        return _finish(hidden_states, zeros, collected, packing, return_packed)
    plans = _plans(encoder)
    ops = ops_for(be, x.device)
    record.OPS[ops] += 1
    # hidden states and a capturable layer callback (COMET's mix: ``graph_key``) are outputs of the graph too; any
    # other callback runs Python between the layers, so such a call runs the eager stack
    if layer_callback is None or getattr(layer_callback, "graph_key", None) is not None:
        ran = _graphed_stack(encoder, plans, x, packing, ops, causal, bool(output_hidden_states), layer_callback)
        if ran is not None:
            return _finish(hidden_states, ran[0], ran[1], packing, return_packed)
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
_NOT_CUDA: dict[str, tuple[Reason, ...]] = {}  # device type -> the reason (made once: a packed CPU call makes none)


class _Holder:
    __slots__ = ("plans", "callback")


def _graphed_stack(
    encoder: nn.Module,
    plans: Plans,
    x: torch.Tensor,
    packing: Packing,
    ops: Ops,
    causal: bool,
    hidden: bool = False,
    callback: Any = None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None] | None:
    """The packed stack through ``PackedGraphRunner`` (captured, or emulated): ``(out, collected hidden states or
    None)``, or None: run it eagerly (the reasons in ``graph_reasons(encoder)``). With ``hidden`` the L + 1 hidden
    states are outputs of the graph; a capturable ``callback`` (``graph_key``, ``static_twin``, ``load``, ``begin``,
    ``results``, ``finish``: COMET's ``PackedLayerMix``) runs inside it on a static twin whose inputs (the mix
    weights) are copied in before each run, its results handed back by ``finish``."""
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
            off = _NOT_CUDA.get(dev.type)
            if off is None:
                off = _NOT_CUDA[dev.type] = (Reason(CUDA_GRAPHS, f"the tensors are on {dev.type}, not CUDA"),)
            d["_xlmrxl_graph_reasons"] = off
            return None
        if not ops.kernel("attention_varlen"):
            record.graph_fallback()
            d["_xlmrxl_graph_reasons"] = (
                Reason(
                    CUDA_GRAPHS,
                    "attention runs the PyTorch reference, which reads the sequence lengths on the host",
                ),
            )
            return None
        if in_capture():
            return None  # someone else's capture records us: no capture inside a capture
    key = (ops, x.dtype, causal, hidden, None if callback is None else callback.graph_key)
    runners = d.get("_xlmrxl_graph_runners")
    if runners is None:
        runners = d["_xlmrxl_graph_runners"] = _Runners()
    runner = runners.get(key)
    if runner is None:
        runner = runners[key] = _packed_runner(encoder, x, ops, causal, hidden, mode)
    T, B = x.shape[0], packing.batch
    if runner.bucket(T, B, packing.max_seqlen) is None:
        record.graph_fallback()
        d["_xlmrxl_graph_reasons"] = (
            Reason(
                CUDA_GRAPHS,
                f"{T} tokens in {B} sequences exceed the CUDA-graph buckets (max_tokens={runner.ladder[-1]}, "
                f"max_segments={runner.max_segments})",
            ),
        )
        return None
    d["_xlmrxl_graph_reasons"] = ()
    holder = runner.holder
    holder.plans = plans
    if callback is not None:
        if holder.callback is None:
            holder.callback = callback.static_twin()
        holder.callback.load(callback)  # this call's inputs (COMET: the mix weights) into the static twin
    elif holder.callback is not None:
        holder.callback = None
    res = runner(x, packing.cu_seqlens, packing.max_seqlen, key=plans.generation)
    d["_xlmrxl_last_graph"] = runner.last_event
    if not isinstance(res, tuple):
        return res, None
    n = len(plans) + 1 if hidden else 0
    if callback is not None:
        callback.finish(res[1 + n :], packing)
    return res[0], list(res[1 : 1 + n]) if hidden else None


def _packed_runner(encoder: nn.Module, x: torch.Tensor, ops: Ops, causal: bool, hidden: bool, mode) -> Any:
    """A ``PackedGraphRunner`` whose ``run`` is the layer stack (and hidden states, callback) on static buffers."""
    holder = _Holder()
    holder.callback = None
    kernel = ops.kernel("attention_varlen")

    def run(xs: torch.Tensor, cu: torch.Tensor, max_seqlen: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
        lengths = () if kernel else tuple(torch.diff(cu).tolist())  # (emulate with the reference attention)
        p = Packing(cu.shape[0] - 1, 0, None, cu, max_seqlen, lengths)
        cb = holder.callback
        if cb is not None:
            cb.begin(p)
        out, collected = _stack(holder.plans, xs, p, ops, causal, hidden, cb)
        extra = () if cb is None else tuple(cb.results())
        if not hidden and not extra:
            return out
        return (out, *(collected or ()), *extra)

    dev = x.device
    pool = model_graph_pool(encoder) if dev.type == "cuda" and mode != "emulate" else None
    runner = PackedGraphRunner(
        run,
        hidden_size=x.shape[1],
        dtype=x.dtype,
        mode=mode,
        pool=pool,
        tensors=module_tensors(encoder),  # a graph reads addresses: every storage is compared per call
        max_tokens=encoder.__dict__.get("_xlmrxl_graph_max_tokens", 4096),
    )
    runner.holder = holder
    return runner


def resolve_device_error(dev: torch.device) -> None:
    raise ValueError(
        f"cuda_graphs=True but the tensors are on {dev.type}; CUDA graphs need a CUDA device. Use "
        f"cuda_graphs='auto' (graphs only on CUDA) or {ENV_VAR}=emulate to run the bucketed path here"
    )


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
