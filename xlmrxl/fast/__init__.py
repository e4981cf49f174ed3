"""The fused path: padding-free (packed) and cached-decoding execution of an XLM-RoBERTa-XL layer stack.

    r = route(encoder, Call(hidden_states=h, attention_mask=mask2d))   # the one decision: packed, cached or exact
    out = run(encoder, r, h, backend, exact=own_forward)              # the one way to act on it

- ``routing``: the one decision, per call, of how the encoder runs (packed, cached, exact) and why not faster.
- ``structure``: what the route checks on the modules (layout, LayerNorms, GELU, int4) and the per-layer plans.
- ``packing``: where the real tokens sit in ``(T, H)`` and how to scatter them back (flash-attention's
  ``bert_padding``; the gather, ``pack``, is in ``stack``).
- ``qkv``: the fused ``(3H, H)`` q/k/v weight the three projections become views of.
- ``stack``: ``run`` (acting on a route), ``pack``, the layer stack on packed tokens (``encoder_forward``; its
  unpadded core, ``packed_stack``, is the unit to capture or instrument) with CUDA graphs per encoder
  (``set_graph_mode``, ``graph_reasons``: why the last packed call ran eagerly).
- ``decode``: the layer stack with a KV cache (``decoder_forward``); ``decode_graph``: its captured one-token step.
- ``graphs``: the CUDA-graph runners (buckets, static buffers, capture, replay) and each encoder's mode.
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
