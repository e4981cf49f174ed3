"""The fused layer stack with a KV cache: ``decoder_forward`` (incremental decoding, or a prefill that fills the
cache), eagerly or, for one new token per row against an xlmrxl ``StaticCache``, through a ``DecodeGraphRunner``
(``xlmrxl.fast.decode_graph``) when the encoder's CUDA-graph mode says so (``xlmrxl.fast.graphs.set_graph_mode``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .. import record
from ..backend import Backend
from ..caches import DynamicCache, StaticCache
from .decode_graph import DecodeGraphRunner
from .graphs import _Runners, graph_mode, in_capture, model_graph_pool, module_tensors
from .layer import Stream, ops_for, run_layer
from .structure import layer_plans

__all__ = ["decoder_forward"]


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
    out = runner(hidden_states, attention_mask, key=layer_plans(encoder).generation)
    encoder.__dict__["_xlmrxl_last_graph"] = runner.last_event
    return out


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
    ops = ops_for(be, x.device)
    record.OPS[ops] += 1
    fns = ops.sites(B * S, x.dtype)
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
