"""Packing: gather the real tokens of a padded batch into ``(T, H)`` and scatter them back (``bert_padding``)."""

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


def pack(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, Packing]:
    """Gather the real tokens of ``hidden_states`` (B, S, H) per the 2D ``attention_mask`` (nonzero = real).

    One host sync (the per-row lengths) when a mask is given; none without one."""
    B, S = hidden_states.shape[:2]
    dev = hidden_states.device
    if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"attention_mask must have shape (batch, seq) = ({B}, {S}) to match the hidden states, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask is None or S == 0:  # (no columns: every row is empty, nothing to read)
        cu = torch.arange(B + 1, dtype=torch.int32, device=dev) * S
        p = Packing(B, S, None, cu, S, (S,) * B)
        return p.pack(hidden_states), p
    keep = attention_mask.to(device=dev) != 0
    lengths = keep.sum(dim=1, dtype=torch.int32)
    lens = lengths.tolist()  # the one host sync of the forward
    total = sum(lens)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.cumsum(lengths, dim=0, dtype=torch.int32)
    if total == B * S:
        p = Packing(B, S, None, cu, S, tuple(lens))
    else:
        # Stable sort puts real positions first, in order: their indices without a second sync (nonzero would sync).
        order = torch.argsort((~keep).reshape(-1).to(torch.int8), stable=True)
        p = Packing(B, S, order[:total], cu, max(lens) if lens else 0, tuple(lens))
    return p.pack(hidden_states), p


@dataclass
class PackedEncoderOutput:
    """``encoder_forward(..., return_packed=True)``: outputs on the real tokens only (T, H) and how to unpack them."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    packing: Packing
