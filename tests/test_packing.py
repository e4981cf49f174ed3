"""Packing (``xlmrxl.fast.pack``): the real tokens of a padded batch gathered into ``(T, H)`` with their
``cu_seqlens``, scattered back with zeros at padding; no copy without padding; a mask of the wrong shape refused."""

import pytest
import torch

from xlmrxl.fast import pack


def test_pack_unpack_roundtrip():
    B, S, H = 4, 7, 5
    x = torch.randn(B, S, H)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, 4:] = 0
    mask[1] = 0
    mask[2, 1:] = 0
    mask[3, :2] = 0  # left padding
    packed, p = pack(x, mask)
    T = int(mask.sum())
    assert packed.shape == (T, H) and packed.dtype == x.dtype, f"packed {tuple(packed.shape)} {packed.dtype}"
    assert p.cu_seqlens.dtype == torch.int32 and p.cu_seqlens.tolist() == [0, 4, 4, 5, 10]
    assert p.max_seqlen == 5 and p.num_tokens == T
    assert torch.equal(packed, x[mask.bool()]), "packed rows must be the real tokens in order"
    back = p.unpack(packed)
    assert back.shape == x.shape
    assert torch.equal(back[mask.bool()], x[mask.bool()]) and back[~mask.bool()].abs().max() == 0


def test_pack_no_padding_is_a_view():
    x = torch.randn(3, 5, 8)
    for mask in (None, torch.ones(3, 5)):
        packed, p = pack(x, mask)
        assert p.indices is None and p.max_seqlen == 5 and p.cu_seqlens.tolist() == [0, 5, 10, 15]
        assert packed.data_ptr() == x.data_ptr(), "no padding: packing must not copy"


def test_pack_rejects_bad_mask_shape():
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        pack(torch.randn(3, 5, 8), torch.ones(3, 6))
