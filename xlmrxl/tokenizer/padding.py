"""Padding encoded rows to a common length: the target length of a batch, the fill of each field, and
transformers' ``tokenizer.pad`` on already encoded inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .encoding import BatchEncoding, convert
from .strategies import resolve_strategies


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
    enc: dict[str, list], length: int, want_mask: bool, side: str, pad_id: int, pad_type_id: int
) -> dict[str, list]:
    """``enc`` padded to ``length`` on ``side`` (adding ``attention_mask`` when ``want_mask``)."""
    n = len(enc["input_ids"])
    gap = length - n
    fills = {"input_ids": pad_id, "token_type_ids": pad_type_id, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
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


def _plain(v: Any) -> Any:
    return v.tolist() if hasattr(v, "tolist") else v


def pad_encoded(
    encoded: Any,
    padding: Any,
    max_length: Any,
    pad_to_multiple_of: Any,
    side: str,
    return_attention_mask: bool | None,
    return_tensors: str | None,
    pad_id: int,
    pad_type_id: int,
    model_max_length: int = int(1e30),
) -> BatchEncoding:
    """transformers' ``tokenizer.pad``: one encoded input (a dict of lists), a batch (a dict of lists of lists) or
    a list of encoded inputs, padded to the longest (``padding=True``) or to ``max_length``; tensors in give
    tensors of the same kind out unless ``return_tensors`` says otherwise."""
    if isinstance(encoded, (list, tuple)) and encoded and isinstance(encoded[0], Mapping):
        encoded = {k: [e[k] for e in encoded] for k in encoded[0].keys()}
    if not isinstance(encoded, Mapping) or "input_ids" not in encoded:
        raise ValueError(
            "pad() takes what the tokenizer returned: a dict (or a list of dicts) with 'input_ids'; got "
            f"{type(encoded).__name__}" + (f" with keys {sorted(encoded)}" if isinstance(encoded, Mapping) else "")
        )
    first = encoded["input_ids"]
    if return_tensors is None and first is not None and len(first):
        probe = first[0] if isinstance(first, (list, tuple)) else first
        mod = type(probe).__module__
        return_tensors = "pt" if mod.startswith("torch") else "np" if mod.startswith("numpy") else None
    data = {k: _plain(v) for k, v in encoded.items()}
    ids = data["input_ids"]
    want_mask = True if return_attention_mask is None else bool(return_attention_mask)
    pad, _, max_length = resolve_strategies(padding, False, max_length, pad_to_multiple_of, model_max_length)
    if not ids:
        if return_attention_mask:  # an explicit True only, as transformers
            data["attention_mask"] = []
        return BatchEncoding(data)
    single = not isinstance(ids[0], (list, tuple))
    rows = [data] if single else [{k: v[i] for k, v in data.items()} for i in range(len(ids))]
    if pad_to_multiple_of is not None:
        pad_to_multiple_of = int(pad_to_multiple_of)
    target = pad_target([len(r["input_ids"]) for r in rows], pad, max_length, pad_to_multiple_of)
    out = []
    for r in rows:
        n = len(r["input_ids"])
        if want_mask and "attention_mask" not in r:
            r = dict(r, attention_mask=[1] * n)
        if target is not None and target > n:
            gap = target - n
            fills = {"input_ids": pad_id, "token_type_ids": pad_type_id, "special_tokens_mask": 1}
            if want_mask:
                fills["attention_mask"] = 0
            r = {k: (_fill(v, fills[k], gap, side) if k in fills else v) for k, v in r.items()}
        out.append(r)
    data = out[0] if single else {k: [r[k] for r in out] for k in out[0]}
    enc = BatchEncoding(data)
    return convert(enc, return_tensors)


def _fill(v: list, value: int, gap: int, side: str) -> list:
    return list(v) + [value] * gap if side == "right" else [value] * gap + list(v)
