"""The CUDA-graph runner of the cached decode step: DecodeGraphRunner(step, cache, ...).

One cached decode step (S = 1 new token per row) against an ``xlmrxl.StaticCache``.
``step(hidden (B, 1, H), keep (B, Kb), cache_view) -> (B, 1, H)`` is the fused decoder stack (e.g.
``decoder_forward(encoder, hidden, keep, cache_view, backend)[0]``). Nothing on the host is baked in: the write
slot is the device tensor ``positions`` (B,) int64 read by ``cache_update`` in the graph, the keys seen are the
fixed view ``cache.keys[l][:, :, :Kb]`` of a KV-length bucket Kb >= n + 1 (same ladder, capped at
``max_length``), and the mask (B, Kb) is a static device buffer: the caller's mask over ``[0, n + 1)``, zeros
over the unwritten slots. ``cache_view.get_seq_length()`` is Kb - 1, so the step's query is aligned to the end
of the view (with one query per row, causality is the mask). After the step the cache's host lengths advance
by one (``StaticCache.advance``).
Token positions for the embeddings stay outside (the caller computes them; to capture the embeddings
too, pass position ids as a static device buffer the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch

from ..caches.view import CacheView, advance_to
from .buckets import ceil_bucket, token_buckets
from .graphs import _clone_out, _GraphBase

__all__ = ["DecodeGraphRunner"]


class _DecodeSlot:
    __slots__ = ("bucket", "hidden", "keep", "view", "graph", "out")

    def __init__(self, bucket, batch: int, hidden: int, dtype, mask_dtype, device, cache, positions):
        kb = bucket[0]
        self.bucket = bucket
        self.hidden = torch.zeros((batch, 1, hidden), dtype=dtype, device=device)
        self.keep = torch.zeros((batch, kb), dtype=mask_dtype, device=device)
        self.view = CacheView(cache, kb, positions)
        self.graph = None
        self.out = None


class DecodeGraphRunner(_GraphBase):
    """One-token decode steps against a ``StaticCache`` through KV-length buckets (see the module docstring).

    ``step(hidden (B, S, H), mask (B, past + S) or None, cache) -> (B, S, H)`` (or a tuple of such): called with the
    static buffers and a ``CacheView`` on the bucketed path, and as given (the real cache) on the eager one
    (prefill, S > 1, an unallocated cache, mode off). ``cache`` the StaticCache; ``hidden_size`` / ``dtype`` of the
    step's hidden states."""

    def __init__(
        self,
        step: Callable[..., Any],
        cache: Any,
        *,
        hidden_size: int,
        dtype: torch.dtype,
        mode: bool | str | None = None,
        tensors: Callable[[], Iterable[torch.Tensor]] | None = None,
        min_tokens: int = 16,
        pool: Any = None,
        warmup: int = 2,
        max_graphs: int = 64,
    ) -> None:
        self.step, self.cache = step, cache
        self.hidden_size, self.dtype = int(hidden_size), dtype
        self.ladder = token_buckets(cache.max_length, min(min_tokens, cache.max_length))
        self._positions: torch.Tensor | None = None

        def collect() -> list[torch.Tensor]:  # the cache's buffers are read by the graphs too
            own = list(tensors()) if tensors is not None else []
            return own + [t for t in (*cache.keys, *cache.values) if t is not None]

        super().__init__(mode=mode, pool=pool, tensors=collect, warmup=warmup, max_graphs=max_graphs)

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, *, key: Hashable = None):
        cache = self.cache
        self.last_event = None
        B, S, H = hidden.shape
        n = int(cache.get_seq_length())
        end = n + S
        if attention_mask is not None and tuple(attention_mask.shape) != (B, end):
            raise ValueError(
                f"attention_mask must be (batch, past + 1) = ({B}, {end}) with {n} cached positions, got "
                f"{tuple(attention_mask.shape)}"
            )
        how = self._use_static(hidden.device)
        if (
            how is None
            or S != 1
            or H != self.hidden_size
            or hidden.dtype != self.dtype
            or B != cache.batch_size
            or any(k is None for k in cache.keys)
        ):
            return self.step(hidden, attention_mask, cache)  # eager: prefill, several tokens, unallocated cache
        if end > cache.max_length:
            raise ValueError(
                f"StaticCache is full: it holds {n} tokens and got 1 more, but max_length={cache.max_length}; "
                f"allocate StaticCache(..., max_length>={end}) or crop() it"
            )
        self._check_weights(key)
        kb = ceil_bucket(end, self.ladder)
        mask_dtype = attention_mask.dtype if attention_mask is not None else torch.long
        bucket = (kb, mask_dtype)
        if self._positions is None or self._positions.device != hidden.device:
            self._positions = torch.zeros(B, dtype=torch.int64, device=hidden.device)
        slot = self._slot(
            bucket,
            lambda: _DecodeSlot(bucket, B, H, self.dtype, mask_dtype, hidden.device, cache, self._positions),
        )
        self._positions.fill_(n)
        slot.hidden.copy_(hidden)
        if attention_mask is None:
            slot.keep[:, :end].fill_(1)
        else:
            slot.keep[:, :end].copy_(attention_mask)
        if end < kb:
            slot.keep[:, end:].zero_()
        if how == "graph":
            captured = slot.graph is None
            if captured:
                # the warm-up runs write this step's K/V too (same slot, same values): harmless, then replayed
                self._capture(slot, lambda: self.step(slot.hidden, slot.keep, slot.view))
                self._weights.snapshot()
            slot.graph.replay()
            self._replayed(captured)
        else:
            fresh = slot.out is None
            slot.out = self.step(slot.hidden, slot.keep, slot.view)
            if fresh:
                self._weights.snapshot()
            self._emulated()
        advance_to(cache, end)
        return _clone_out(slot.out)
