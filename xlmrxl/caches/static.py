"""``StaticCache``: a preallocated KV cache for decoding, written in place by the compiled ``cache_update`` op.

    cache = StaticCache(config, batch_size=4, max_length=128, dtype=torch.bfloat16, device="cuda")
    out = model(input_ids, attention_mask=mask, past_key_values=cache, use_cache=True)

Per layer it holds K and V buffers of shape (batch_size, num_heads, max_length, head_dim), allocated once:
eagerly when ``dtype`` or ``device`` is given, else at a layer's first ``update`` with the dtype and device of the
states it receives. ``update`` writes the step's (B, H, T, D) states into slots ``[n, n + T)`` with
``xlmrxl_kernels.cache_update()`` (one call per layer, no host sync, K and V together) and returns the **filled
prefix views** ``keys[:, :, :n + T]`` / ``values[:, :, :n + T]`` (no copy), so attention only ever sees cached
tokens and the attention mask keeps its usual (B, n + T) shape.

It implements the ``xlmrxl.caches.Cache`` contract (``update``, ``get_seq_length``, ``get_layer``,
``get_max_cache_shape``, ``reorder_cache``, ``crop``, ``reset``) and therefore works as ``past_key_values`` of our
models, and inside an ``EncoderDecoderCache(StaticCache(...), StaticCache(...))`` for decoders with
cross-attention (the cross-attention one needs ``max_length`` >= the encoder length).

Limits and choices:
- Every row of the batch has the same length (batch-synchronous decoding; pad shorter prompts on the **left** and
  let the attention mask hide the pads, as ``xlmrxl.generation`` does).
- Writing past ``max_length`` raises ``ValueError`` before anything is written (the lengths are tracked on the
  host, so this costs no sync). ``crop(n)`` keeps the first n tokens (negative n drops that many) and zeroes the rest;
  ``reset()`` zeroes everything; ``reorder_cache(beam_idx)`` permutes the batch in place (``cache_reorder``) over
  the filled slots only.
- ``cache_kwargs["cache_position"]`` is ignored: the write offset is the host-side length (transformers'
  ``StaticCache`` returns the whole buffer and relies on the mask; returning the prefix makes the shapes grow each
  step instead, which is what the eager attention here expects).
- The batch size is fixed: for beam search allocate ``batch_size * num_beams`` rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from xlmrxl_kernels import cache_reorder, cache_reset, cache_update

from .dynamic import Cache

logger = logging.getLogger("xlmrxl")

__all__ = ["StaticCache"]


def _dims(config: Any) -> tuple[int, int, int]:
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, hidden)):
        raise ValueError(
            "StaticCache needs a config with positive num_hidden_layers, num_attention_heads and "
            f"hidden_size, got {layers}, {heads}, {hidden}"
        )
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    return layers, heads, hidden // heads


class StaticCache(Cache):
    """Preallocated per-layer K/V (batch_size, heads, max_length, head_dim); see the module docstring."""

    is_compileable = True

    def __init__(
        self,
        config: Any = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        max_batch_size: int | None = None,
        max_cache_len: int | None = None,
    ) -> None:
        # max_batch_size / max_cache_len: transformers' keyword names, accepted as aliases
        batch_size = batch_size if batch_size is not None else max_batch_size
        max_length = max_length if max_length is not None else max_cache_len
        if config is None:
            raise ValueError("StaticCache needs the model config (for layers, heads and head_dim)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"StaticCache batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"StaticCache max_length must be a positive int, got {max_length!r}")
        self.num_layers, self.num_heads, self.head_dim = _dims(config)
        self.batch_size, self.max_length = batch_size, max_length
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.keys: list[torch.Tensor | None] = [None] * self.num_layers
        self.values: list[torch.Tensor | None] = [None] * self.num_layers
        self._lengths: list[int] = [0] * self.num_layers
        self._positions: dict[tuple[int, torch.device], torch.Tensor] = {}
        if dtype is not None or device is not None:
            for layer_idx in range(self.num_layers):
                self._allocate(layer_idx, dtype or torch.get_default_dtype(), self.device or torch.device("cpu"))

    # -- transformers-style aliases ------------------------------------------------------------------------------
    @property
    def max_batch_size(self) -> int:
        return self.batch_size

    @property
    def max_cache_len(self) -> int:
        return self.max_length

    def __repr__(self) -> str:
        return (
            f"StaticCache(layers={self.num_layers}, batch_size={self.batch_size}, max_length={self.max_length}, "
            f"seq_length={self.get_seq_length()}, dtype={self.dtype}, device={self.device})"
        )

    def __len__(self) -> int:
        return self.num_layers

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get_layer(layer_idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for layer_idx in range(self.num_layers):
            if self.keys[layer_idx] is not None:
                yield self.get_layer(layer_idx)

    # -- storage ---------------------------------------------------------------------------------------------------
    def _allocate(self, layer_idx: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.batch_size, self.num_heads, self.max_length, self.head_dim)
        self.keys[layer_idx] = torch.zeros(shape, dtype=dtype, device=device)
        self.values[layer_idx] = torch.zeros(shape, dtype=dtype, device=device)
        self.dtype, self.device = dtype, device

    def _check_layer(self, layer_idx: int) -> None:
        if not 0 <= layer_idx < self.num_layers:
            raise IndexError(f"layer_idx {layer_idx} is out of range: this StaticCache has {self.num_layers} layers")

    def _start_positions(self, start: int, device: torch.device) -> torch.Tensor:
        """(B,) int64 write offsets on ``device``; one small tensor per offset, shared by all layers of a step."""
        key = (start, device)
        pos = self._positions.get(key)
        if pos is None:
            if len(self._positions) > 4:  # only the current step's offset is ever reused
                self._positions.clear()
            pos = torch.full((self.batch_size,), start, dtype=torch.int64, device=device)
            self._positions[key] = pos
        return pos

    # -- the Cache contract ------------------------------------------------------------------------------------------
    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, T, D) states to layer ``layer_idx``; return its filled (B, H, n + T, D) prefix views."""
        self._check_layer(layer_idx)
        if key_states.dim() != 4 or key_states.shape != value_states.shape:
            raise ValueError(
                f"StaticCache.update takes key and value states of one shape (B, H, T, D), got "
                f"{tuple(key_states.shape)} and {tuple(value_states.shape)}"
            )
        B, H, T, D = key_states.shape
        if (B, H, D) != (self.batch_size, self.num_heads, self.head_dim):
            raise ValueError(
                f"StaticCache holds (batch_size, heads, head_dim) = ({self.batch_size}, {self.num_heads}, "
                f"{self.head_dim}) but layer {layer_idx} got states of shape {tuple(key_states.shape)}; "
                "build the cache with the batch size you decode with (times num_beams)"
            )
        keys = self.keys[layer_idx]
        if keys is None:
            self._allocate(layer_idx, key_states.dtype, key_states.device)
            keys = self.keys[layer_idx]
        elif keys.dtype != key_states.dtype or keys.device != key_states.device:
            raise TypeError(
                f"StaticCache layer {layer_idx} holds {keys.dtype} on {keys.device} but got "
                f"{key_states.dtype} states on {key_states.device}; build it with dtype=model.dtype, "
                "device=model.device"
            )
        start = self._lengths[layer_idx]
        end = start + T
        if end > self.max_length:
            raise ValueError(
                f"StaticCache is full: layer {layer_idx} holds {start} tokens and got {T} more, but "
                f"max_length={self.max_length}; allocate StaticCache(..., max_length>={end}) or crop() it"
            )
        values = self.values[layer_idx]
        cache_update(keys, values, key_states, value_states, self._start_positions(start, keys.device))
        self._lengths[layer_idx] = end
        return keys[:, :, :end], values[:, :, :end]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        layer_idx = 0 if layer_idx is None else layer_idx
        if not 0 <= layer_idx < self.num_layers:
            return 0
        return self._lengths[layer_idx]

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens as written in every layer (their K/V were stored into the buffers by other means,
        e.g. a CUDA-graph decode step writing at device positions); the buffers are not touched."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"StaticCache.advance takes a token count >= 0, got {n!r}")
        end = max(self._lengths) + n
        if end > self.max_length:
            raise ValueError(
                f"StaticCache is full: it holds {max(self._lengths)} tokens and {n} more were written, but "
                f"max_length={self.max_length}; allocate StaticCache(..., max_length>={end}) or crop() it"
            )
        if len(set(self._lengths)) > 1:
            raise ValueError(
                f"StaticCache.advance needs every layer at the same length, got {sorted(set(self._lengths))}"
            )
        self._lengths = [end] * self.num_layers

    def get_layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer_idx)
        if self.keys[layer_idx] is None or self._lengths[layer_idx] == 0:
            raise KeyError(f"layer {layer_idx} has nothing cached yet")
        n = self._lengths[layer_idx]
        return self.keys[layer_idx][:, :, :n], self.values[layer_idx][:, :, :n]

    def get_max_cache_shape(self) -> int:
        return self.max_length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row b takes the cached tokens of row ``beam_idx[b]``, in place, over the filled slots."""
        for layer_idx in range(self.num_layers):
            keys = self.keys[layer_idx]
            if keys is not None and self._lengths[layer_idx] > 0:
                cache_reorder(keys, self.values[layer_idx], beam_idx.to(keys.device), self._lengths[layer_idx])

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens of every layer (negative: drop that many); zero the slots after."""
        for layer_idx in range(self.num_layers):
            n = self._lengths[layer_idx]
            keep = n + max_length if max_length < 0 else max_length
            keep = max(0, min(n, keep))
            if keep < n:
                cache_reset(self.keys[layer_idx], self.values[layer_idx], keep)
                self._lengths[layer_idx] = keep

    def reset(self) -> None:
        """Forget every cached token (the buffers are kept, zeroed)."""
        for layer_idx in range(self.num_layers):
            if self.keys[layer_idx] is not None:
                cache_reset(self.keys[layer_idx], self.values[layer_idx], 0)
            self._lengths[layer_idx] = 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("StaticCache has a fixed batch size; allocate it with batch_size * num_beams rows")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("StaticCache has a fixed batch size; use reorder_cache(beam_idx) to permute rows")

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per-layer ``(keys, values)`` filled prefixes (views), for layers that hold something."""
        return tuple(
            self.get_layer(i) for i in range(self.num_layers) if self.keys[i] is not None and self._lengths[i] > 0
        )
