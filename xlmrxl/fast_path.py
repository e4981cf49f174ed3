"""Compatibility alias of ``xlmrxl.fast`` (the fused path), for code that imported ``xlmrxl.fast_path``."""

from __future__ import annotations

from .fast import PackedEncoderOutput, Packing, decoder_forward, encoder_forward, fuse_qkv, pack

__all__ = ["encoder_forward", "decoder_forward", "pack", "Packing", "PackedEncoderOutput", "fuse_qkv"]
