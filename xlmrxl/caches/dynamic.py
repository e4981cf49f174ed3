"""Key/value caches for decoder mode (``config.is_decoder=True``): the reference ``DynamicCache`` and the
``EncoderDecoderCache`` pair, mirroring transformers 4.56.2's classes of the same names.

The contract the attention layers rely on (and the only methods they call), so any ``Cache`` subclass, e.g. the
preallocated ``xlmrxl.caches.StaticCache``, slots in:

- ``update(key_states, value_states, layer_idx, cache_kwargs=None) -> (keys, values)``: append this step's
  (B, H, S_new, D) states for one layer and return everything cached for it, (B, H, S_past + S_new, D).
- ``get_seq_length(layer_idx=0) -> int``: tokens cached so far (the position offset of the next step).
- ``get_layer(layer_idx) -> (keys, values)``: read a layer without appending (used for cross-attention K/V that
  are computed once from the encoder states and reused at every later step).

Maintenance: ``reorder_cache(beam_idx)`` (beam search), ``crop(max_length)`` (negative: drop that many tokens),
``reset()``. ``to_legacy_cache()`` / ``from_legacy_cache()`` convert to and from the tuple-of-tuples format
(``((k, v), ...)`` or ``((k, v, cross_k, cross_v), ...)``) that transformers also accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch


class Cache:
    """Base class of the KV caches. Subclasses implement ``update``, ``get_seq_length``, ``get_layer`` and the
    maintenance methods; the model never touches their storage."""

    is_compileable = False

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement get_seq_length()")

    def get_layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_layer()")

    def get_max_cache_shape(self) -> int | None:
        """Capacity in tokens, or None when the cache grows without bound."""
        return None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement reorder_cache()")

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement crop()")

    def reset(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement reset()")


class DynamicLayer:
    """One layer's growing K/V, (B, H, S, D) each; ``keys``/``values`` are None until the first update."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return 0 if self.keys is None or self.keys.numel() == 0 else self.keys.shape[-2]


class DynamicCache(Cache):
    """A cache that grows by concatenation, one ``DynamicLayer`` per model layer (created on first use).

    ``DynamicCache(legacy)`` accepts an iterable of per-layer ``(keys, values)`` pairs; ``config`` is accepted and
    ignored (transformers' signature)."""

    def __init__(
        self, ddp_cache_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None, config: Any = None
    ) -> None:
        self.layers: list[DynamicLayer] = []
        if ddp_cache_data is not None:
            for layer_idx, (k, v) in enumerate(ddp_cache_data):
                self.update(k, v, layer_idx)

    def __repr__(self) -> str:
        return f"DynamicCache(layers={len(self.layers)}, seq_length={self.get_seq_length()})"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx >= len(self.layers):
            raise KeyError(f"cache has {len(self.layers)} layers; asked for layer {layer_idx}")
        return self.layers[layer_idx].keys, self.layers[layer_idx].values

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for layer in self.layers:
            yield layer.keys, layer.values

    def _layer(self, layer_idx: int) -> DynamicLayer:
        while len(self.layers) <= layer_idx:
            self.layers.append(DynamicLayer())
        return self.layers[layer_idx]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, cache_kwargs: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._layer(layer_idx).update(key_states, value_states)

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        layer_idx = 0 if layer_idx is None else layer_idx
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].get_seq_length()

    def get_layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx >= len(self.layers) or self.layers[layer_idx].keys is None:
            raise KeyError(f"layer {layer_idx} has nothing cached yet")
        layer = self.layers[layer_idx]
        return layer.keys, layer.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            if layer.keys is not None:
                idx = beam_idx.to(layer.keys.device)
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens (a negative value drops that many from the end)."""
        length = self.get_seq_length()
        if max_length < 0:
            max_length = length - abs(max_length)
        if length <= max_length:
            return
        for layer in self.layers:
            if layer.keys is not None:
                layer.keys = layer.keys[..., :max_length, :]
                layer.values = layer.values[..., :max_length, :]

    def reset(self) -> None:
        self.layers = []

    def batch_repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            if layer.keys is not None:
                layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
                layer.values = layer.values.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for layer in self.layers:
            if layer.keys is not None:
                layer.keys = layer.keys[indices, ...]
                layer.values = layer.values[indices, ...]

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return tuple((layer.keys, layer.values) for layer in self.layers)

    @classmethod
    def from_legacy_cache(cls, past_key_values: Any) -> DynamicCache:
        cache = cls()
        if past_key_values is not None:
            for layer_idx, kv in enumerate(past_key_values):
                cache.update(kv[0], kv[1], layer_idx)
        return cache


class EncoderDecoderCache(Cache):
    """A self-attention cache and a cross-attention cache. ``update``/``get_seq_length`` act on the self-attention
    part; ``is_updated[layer_idx]`` says the cross-attention K/V of that layer are stored and must be reused."""

    def __init__(self, *caches: Any) -> None:
        if len(caches) == 1:  # legacy tuples
            self.self_attention_cache: Cache = DynamicCache()
            self.cross_attention_cache: Cache = DynamicCache()
            for layer_idx, kv in enumerate(caches[0]):
                self.self_attention_cache.update(kv[0], kv[1], layer_idx)
                if len(kv) > 2:
                    self.cross_attention_cache.update(kv[2], kv[3], layer_idx)
        elif len(caches) == 2:
            for c in caches:
                if not hasattr(c, "update") or not hasattr(c, "get_seq_length"):
                    raise TypeError(
                        f"EncoderDecoderCache takes two Cache objects, got {type(caches[0]).__name__} "
                        f"and {type(caches[1]).__name__}"
                    )
            self.self_attention_cache, self.cross_attention_cache = caches
        else:
            raise ValueError(f"EncoderDecoderCache takes 1 (legacy tuples) or 2 (caches) arguments, got {len(caches)}")
        self.is_updated: dict[int, bool] = {}
        n = len(self.cross_attention_cache) if hasattr(self.cross_attention_cache, "__len__") else 0
        for layer_idx in range(n):
            self.is_updated[layer_idx] = self.cross_attention_cache.get_seq_length(layer_idx) > 0

    def __repr__(self) -> str:
        return (
            f"EncoderDecoderCache(self_attention_cache={self.self_attention_cache!r}, "
            f"cross_attention_cache={self.cross_attention_cache!r})"
        )

    def __len__(self) -> int:
        return len(self.self_attention_cache)

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.self_attention_cache[layer_idx]
        if self.is_updated.get(layer_idx):
            ck, cv = self.cross_attention_cache[layer_idx]
            return k, v, ck, cv
        return k, v

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for layer_idx in range(len(self)):
            yield self[layer_idx]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, cache_kwargs: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.self_attention_cache.update(key_states, value_states, layer_idx, cache_kwargs)

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.self_attention_cache.get_seq_length(layer_idx)

    def get_layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.self_attention_cache.get_layer(layer_idx)

    def get_max_cache_shape(self) -> int | None:
        return self.self_attention_cache.get_max_cache_shape()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)
        self.cross_attention_cache.reorder_cache(beam_idx)

    def crop(self, max_length: int) -> None:
        self.self_attention_cache.crop(max_length)

    def reset(self) -> None:
        self.self_attention_cache.reset()
        self.cross_attention_cache.reset()
        for layer_idx in self.is_updated:
            self.is_updated[layer_idx] = False

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.self_attention_cache.batch_repeat_interleave(repeats)
        self.cross_attention_cache.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.self_attention_cache.batch_select_indices(indices)
        self.cross_attention_cache.batch_select_indices(indices)

    def to_legacy_cache(self) -> tuple:
        self_legacy = self.self_attention_cache.to_legacy_cache()
        if len(self.cross_attention_cache) > 0:
            return tuple(s + c for s, c in zip(self_legacy, self.cross_attention_cache.to_legacy_cache()))
        return self_legacy

    @classmethod
    def from_legacy_cache(cls, past_key_values: Any) -> EncoderDecoderCache:
        cache = cls(DynamicCache(), DynamicCache())
        if past_key_values is not None:
            for layer_idx, kv in enumerate(past_key_values):
                cache.self_attention_cache.update(kv[0], kv[1], layer_idx)
                if len(kv) > 2:
                    cache.cross_attention_cache.update(kv[2], kv[3], layer_idx)
                    cache.is_updated[layer_idx] = True
        return cache


__all__ = ["Cache", "DynamicLayer", "DynamicCache", "EncoderDecoderCache"]
