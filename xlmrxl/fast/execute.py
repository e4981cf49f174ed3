"""Acting on a route: ``run(encoder, route, hidden_states, backend, ...)`` runs the packed, cached or exact execution.

    r = route(encoder, Call(hidden_states=h, attention_mask=mask2d, ...))
    out = run(encoder, r, h, backend, exact=lambda: own_forward(...), cache=past_key_values)

The one place every caller (our encoder's forward, ``forward_packed``, the transformers patch in ``xlmrxl.hf``,
COMET's encoder in ``xlmrxl.clients``) hands a route to: ``PACKED`` runs ``stack.encoder_forward`` (``(last,
all_hidden)``, or a ``PackedEncoderOutput`` with ``return_packed``), ``CACHED`` runs ``decode.decoder_forward`` on the
cache's self-attention cache (``(last, all_hidden)``), ``EXACT`` returns ``exact()``: the caller's own unfused code
(ours, transformers' or COMET's), whatever it returns. It also keeps the record of what ran (``xlmrxl.stats``):
the route counted, ``last_route`` on the encoder, and at DEBUG one line per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .. import record
from ..backend import Backend
from . import decode, stack
from .layer import ops_for
from .routing import CACHED, EXACT, Route

__all__ = ["run"]


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
    layer_callback: stack.LayerCallback | None = None,
) -> Any:
    """Run ``route`` (``xlmrxl.fast.route``'s decision for this call) on ``encoder`` (see the module docstring).

    ``exact``: the caller's exact execution, called without arguments when the route is ``EXACT`` (None: an
    ``EXACT`` route is a ValueError naming its reasons). ``cache``: the KV cache a ``CACHED`` route drives (an
    encoder-decoder cache's ``self_attention_cache`` is used). ``return_packed`` / ``layer_callback``: of
    ``stack.encoder_forward`` (packed route only)."""
    path = route.path
    if not torch.compiler.is_compiling():  # (torch.compile traces this call: nothing recorded inside the graph)
        record.record_route(encoder, route)
        if record.debug_enabled():
            record.log_call(route, hidden_states)
    if path == EXACT:
        if exact is None:
            raise ValueError(f"this call cannot take the fused path: {record.describe_route(route)}")
        return exact()
    be = backend if isinstance(backend, Backend) else Backend(backend)
    if not torch.compiler.is_compiling():
        record.record_ops(ops_for(be, hidden_states.device))
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
    return stack.encoder_forward(
        encoder,
        hidden_states,
        route.mask,
        be,
        output_hidden_states=bool(output_hidden_states),
        return_packed=return_packed,
        causal=route.causal,
        layer_callback=layer_callback,
    )
