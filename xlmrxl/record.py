"""The record of what ran: per-process counters (``xlmrxl.stats()``), each model's ``last_route``, a DEBUG line a call.

    xlmrxl.stats()             # {"routes": {"packed": 12, "exact": 1}, "fallbacks": {"autograd": 1},
                               #  "ops": {"attention_varlen": {"kernel": 12, "pytorch": 0}, ...},
                               #  "graphs": {"captures": 1, "replays": 11, "emulated": 0, "eager": 0}}
    xlmrxl.stats(reset=True)   # the same, then every counter back to zero (also ``xlmrxl.reset_stats()``)
    model.last_route           # LastRoute(path="packed", reasons=(), graph="replayed", ...): the last call's route

``routes``: calls per route (``packed``, ``cached``, ``exact``), counted by ``xlmrxl.fast.run``. ``fallbacks``: per
reason code (``xlmrxl.reasons``), the reasons of each call that ran the exact path, and (code ``cuda_graphs``) each
packed call that ran eagerly where CUDA graphs were asked for. ``ops``: per op, fused forwards whose op resolved to
our kernel versus PyTorch's own (reference, SDPA, cuBLAS). ``graphs``: CUDA-graph captures, replays, emulated
static-buffer runs (``XLMRXL_CUDA_GRAPHS=emulate``) and eager fallbacks. Counting is a few integer increments per
call; the DEBUG line (``xlmrxl`` logger) gives the route, the real tokens and the share of padding avoided, and is
only formatted when DEBUG is enabled.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .reasons import Reason, describe

__all__ = ["stats", "reset_stats", "last_route", "LastRoute"]

logger = logging.getLogger("xlmrxl")

ROUTES: Counter = Counter()
_FALLBACKS: Counter = Counter()
OPS: Counter = Counter()  # resolved op table (xlmrxl.fast.layer.Ops) -> fused forwards that ran with it
_GRAPHS: Counter = Counter()
_LAST = "_xlmrxl_last_route"  # on the encoder: the Route of its last call
_LAST_GRAPH = "_xlmrxl_last_graph"  # on the encoder: how its last packed call used CUDA graphs (None: eagerly)


@dataclass(frozen=True)
class LastRoute:
    """The route of a model's last call: ``path`` (packed / cached / exact), ``reasons`` (why the fused path this
    call was shaped for was not taken; empty when it was), ``not_supported`` (every fused path's reasons),
    ``graph`` (``"captured"``, ``"replayed"``, ``"emulated"``, or None: eagerly) and ``graph_reasons`` (why not
    through a CUDA graph)."""

    path: str
    reasons: tuple[Reason, ...]
    not_supported: dict[str, tuple[Reason, ...]]
    graph: str | None
    graph_reasons: tuple[Reason, ...]

    @property
    def why(self) -> str:
        """One line: the route and why (``"packed"``, ``"exact: autograd is recording ..."``)."""
        if self.reasons:
            return f"{self.path}: {describe(self.reasons)}"
        graph = f" (CUDA graph {self.graph})" if self.graph else ""
        return f"{self.path}{graph}"

    def __str__(self) -> str:
        return self.why


def count_fallbacks(route: Any) -> None:
    """Count the reasons of a call that runs the exact path (``xlmrxl.fast.run`` counts each route inline)."""
    for reason in route.reasons:
        _FALLBACKS[reason.code] += 1


def graph_fallback() -> None:
    """A packed call ran eagerly where CUDA graphs were asked for (a ``cuda_graphs`` reason)."""
    _GRAPHS["eager"] += 1
    _FALLBACKS["cuda_graphs"] += 1


def count_graph(event: str) -> None:
    """A CUDA-graph runner's event: ``captures``, ``replays`` or ``emulated``."""
    _GRAPHS[event] += 1


def stats(reset: bool = False) -> dict[str, dict]:
    """The counters since the process started or the last reset (see the module docstring); ``reset=True``
    returns them and sets them back to zero."""
    ops: dict[str, dict[str, int]] = {}
    for table, n in OPS.items():
        for name in getattr(table, "op_names", ()):
            kind = "kernel" if table.kernel(name) else "pytorch"
            entry = ops.setdefault(name, {"kernel": 0, "pytorch": 0})
            entry[kind] += n
    graphs = {k: _GRAPHS.get(k, 0) for k in ("captures", "replays", "emulated", "eager")}
    out = {
        "routes": {k: ROUTES.get(k, 0) for k in ("packed", "cached", "exact")},
        "fallbacks": dict(_FALLBACKS),
        "ops": ops,
        "graphs": graphs,
    }
    if reset:
        reset_stats()
    return out


def reset_stats() -> None:
    """Set every counter of ``stats()`` back to zero (``last_route`` of each model is kept)."""
    for c in (ROUTES, _FALLBACKS, OPS, _GRAPHS):
        c.clear()


def last_route(model: Any) -> LastRoute | None:
    """The route of ``model``'s last call (an xlmrxl model, an accelerated transformers model, a COMET model or any
    module holding one); None before its first call."""
    for m in model.modules() if hasattr(model, "modules") else (model,):
        last = m.__dict__.get(_LAST)
        if last is not None:
            path, not_supported, wanted = last
            reasons = () if path != "exact" else not_supported[wanted]
            graph_reasons = m.__dict__.get("_xlmrxl_graph_reasons", ()) if path == "packed" else ()
            graph = m.__dict__.get(_LAST_GRAPH)
            return LastRoute(path, reasons, not_supported, graph, () if graph else graph_reasons)
    return None


def log_call(route: Any, hidden_states: Any) -> None:
    """The DEBUG line of one call: route, real tokens of all positions, padding avoided (one host sync)."""
    B, S = hidden_states.shape[:2]
    total = B * S
    mask = route.mask
    real = total if mask is None or mask.shape != (B, S) else int(mask.count_nonzero())
    avoided = 0.0 if route.path == "exact" or not total else 100.0 * (total - real) / total
    why = f" ({describe(route.reasons)})" if route.reasons else ""
    logger.debug("xlmrxl: route=%s tokens=%d/%d padding avoided=%.1f%%%s", route.path, real, total, avoided, why)
