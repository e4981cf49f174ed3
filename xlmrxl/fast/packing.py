"""Packing: where the real tokens of a padded batch sit in ``(T, H)`` and how to scatter them back (``bert_padding``;
the gather itself is ``xlmrxl.fast.stack.pack``, on the path to the first kernel)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packing:
    """Where the packed rows come from. ``indices`` (T,) int64 into the flattened (B*S) positions, or None when
    nothing was dropped (no padding); ``cu_seqlens`` int32 (B+1,); ``max_seqlen`` the longest row."""

    batch: int
    seqlen: int
    indices: torch.Tensor | None
    cu_seqlens: torch.Tensor
    max_seqlen: int
    lengths: tuple[int, ...] = ()  # per-row lengths on the host (read once, in pack)

    @property
    def num_tokens(self) -> int:
        return self.batch * self.seqlen if self.indices is None else int(self.indices.shape[0])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, ...) -> (T, ...)."""
        flat = x.reshape(self.batch * self.seqlen, *x.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, S, ...), zeros at padded positions."""
        if self.indices is None:
            return x.reshape(self.batch, self.seqlen, *x.shape[1:])
        out = x.new_zeros((self.batch * self.seqlen, *x.shape[1:]))
        out.index_copy_(0, self.indices, x)
        return out.reshape(self.batch, self.seqlen, *x.shape[1:])


@dataclass
class PackedEncoderOutput:
    """``encoder_forward(..., return_packed=True)``: outputs on the real tokens only (T, H) and how to unpack them."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    packing: Packing
