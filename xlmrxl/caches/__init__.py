"""The KV caches: the reference ``DynamicCache`` / ``EncoderDecoderCache`` (``dynamic``), the preallocated
``StaticCache`` written by the compiled ``cache_update`` op (``static``), and how any cache is read or viewed by a
captured decode step (``view``: ``cached_length``, ``cached_layer``, ``CacheView``)."""

from __future__ import annotations

from .dynamic import Cache, DynamicCache, EncoderDecoderCache
from .static import StaticCache
from .view import CacheView, advance_to, cached_layer, cached_length

__all__ = [
    "Cache",
    "DynamicCache",
    "EncoderDecoderCache",
    "StaticCache",
    "CacheView",
    "advance_to",
    "cached_layer",
    "cached_length",
]
