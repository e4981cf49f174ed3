"""Padding encoded rows to a common length: the target length of a batch, and the fill of each field."""

from __future__ import annotations


def pad_target(lengths: list[int], pad: str, max_length: int | None, pad_to_multiple_of: int | None) -> int | None:
    """The length to pad every row to under strategy ``pad`` (None: no padding), rounded up to the multiple."""
    if pad == "longest":
        target = max(lengths) if lengths else 0
    elif pad == "max_length":
        target = int(max_length)
    else:
        target = None
    if target is not None and pad_to_multiple_of and target % pad_to_multiple_of:
        target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
    return target


def pad_row(
    enc: dict[str, list[int]], length: int, want_mask: bool, side: str, pad_id: int, pad_type_id: int
) -> dict[str, list[int]]:
    """``enc`` padded to ``length`` on ``side`` (adding ``attention_mask`` when ``want_mask``)."""
    n = len(enc["input_ids"])
    gap = length - n
    fills = {"input_ids": pad_id, "token_type_ids": pad_type_id, "special_tokens_mask": 1}
    out = {}
    if want_mask:
        enc = dict(enc, attention_mask=[1] * n)
        fills["attention_mask"] = 0
    for k, v in enc.items():
        if gap > 0:
            pad = [fills[k]] * gap
            v = v + pad if side == "right" else pad + v
        out[k] = v
    return out
