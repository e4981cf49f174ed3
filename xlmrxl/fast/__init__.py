"""The fused path: padding-free (packed) and cached-decoding execution of an XLM-RoBERTa-XL layer stack.

- ``routing``: the one decision, per call, of how the encoder runs (packed, cached, exact) and why not faster.
- ``structure``: what the route checks on the modules (layout, LayerNorms, GELU, int4) and the per-layer plans.
- ``packing``: gather the real tokens into ``(T, H)`` and scatter back (flash-attention's ``bert_padding``).
- ``qkv``: the fused ``(3H, H)`` q/k/v weight the three projections become views of.
- ``stack``: the layer stack on packed tokens (``encoder_forward``; its unpadded core, ``packed_stack``, is the unit
  to capture or instrument) and, in ``decode``, with a KV cache (``decoder_forward``); CUDA graphs per encoder
  (``set_graph_mode``, ``graph_reasons``: why the last packed call ran eagerly).
- ``graphs``: the CUDA-graph runners (buckets, static buffers, capture, replay).
"""

from __future__ import annotations

from .decode import decoder_forward
from .packing import PackedEncoderOutput, Packing
from .qkv import fuse_qkv
from .routing import CACHED, EXACT, PACKED, Call, Route, route
from .stack import encoder_forward, graph_reasons, pack, packed_stack, run, set_graph_mode

__all__ = [
    "route",
    "run",
    "Call",
    "Route",
    "PACKED",
    "CACHED",
    "EXACT",
    "encoder_forward",
    "decoder_forward",
    "packed_stack",
    "set_graph_mode",
    "graph_reasons",
    "pack",
    "Packing",
    "PackedEncoderOutput",
    "fuse_qkv",
]
