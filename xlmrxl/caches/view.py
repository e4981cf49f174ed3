"""Reading any KV cache (ours, transformers', legacy tuples) and the fixed view a captured decode step writes through.

- ``cached_length(past_key_values)``: tokens already cached (0 for None); ``cached_layer(cache, i)``: one layer's K/V
  without appending.
- ``CacheView``: what the fused decoder stack sees as its cache inside a captured CUDA-graph step of
  ``xlmrxl.fast.decode_graph.DecodeGraphRunner`` (writes at device positions, returns fixed-size prefix views of a
  ``StaticCache``); ``advance_to`` moves the ``StaticCache``'s host lengths after such a step.
"""

from __future__ import annotations

from typing import Any

import torch

from xlmrxl_kernels import cache_update

__all__ = ["cached_length", "cached_layer", "CacheView", "advance_to"]


def cached_length(past_key_values: Any) -> int:
    if past_key_values is None:
        return 0
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    if len(past_key_values) == 0 or past_key_values[0][0] is None:
        return 0
    return int(past_key_values[0][0].shape[-2])


def cached_layer(cache: Any, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one layer's K/V without appending: our ``Cache.get_layer`` or transformers' ``layers[i].keys``."""
    if hasattr(cache, "get_layer"):
        return cache.get_layer(layer_idx)
    layer = cache.layers[layer_idx]
    return layer.keys, layer.values


class CacheView:
    """What the decoder stack sees as its cache during a captured step: writes at the device ``positions``, returns
    the fixed (B, heads, Kb, D) prefix views of the StaticCache's buffers (shapes constant per bucket)."""

    copies_states = True  # cache_update copies: strided views of the QKV output may be handed over

    def __init__(self, cache: Any, kb: int, positions: torch.Tensor) -> None:
        self.cache, self.kb, self.positions = cache, kb, positions

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.kb - 1  # one new query aligned to the end of the Kb-slot view; the mask hides the unwritten

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, cache_kwargs: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer_idx], self.cache.values[layer_idx]
        cache_update(keys, values, key_states, value_states, self.positions)
        return keys[:, :, : self.kb], values[:, :, : self.kb]


def advance_to(cache: Any, end: int) -> None:
    """The StaticCache's host lengths after a step that wrote through ``CacheView`` (no ``update`` call ran)."""
    cache.advance(end - int(cache.get_seq_length()))
