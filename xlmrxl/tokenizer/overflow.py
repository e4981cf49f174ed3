"""Overflowing windows (``return_overflowing_tokens=True`` with ``stride``), laid out as transformers' fast tokenizer
(the ``tokenizers`` library) lays them out: every window of the truncated sequence, each overlapping the previous one
by ``stride`` tokens, the first one being the ordinary truncation."""

from __future__ import annotations


def windows(n: int, size: int, stride: int, side: str) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of windows of ``size`` over ``n`` tokens, overlapping by ``stride``: from the start
    for ``side="right"`` truncation, from the end for ``"left"`` (the kept window first)."""
    if n <= size:
        return [(0, n)]
    step = size - stride
    out: list[tuple[int, int]] = []
    if side == "right":
        for start in range(0, n, step):
            stop = min(start + size, n)
            out.append((start, stop))
            if stop == n:
                break
    else:
        for last in range(n - 1, -1, -step):
            stop = last + 1
            start = max(0, stop - size)
            out.append((start, stop))
            if start == 0:
                break
    return out


def overflow_size(
    max_length: int, n_special: int, stride: int, strategy: str, len_a: int, len_b: int | None, name: str
) -> tuple[str, int]:
    """``(which, size)``: the sequence that overflows (``"a"`` or ``"b"``) and its window length, or a ValueError
    where transformers fails too (its fast tokenizer raises or panics there; the slow one refuses pairs under
    ``longest_first``)."""
    if strategy == "longest_first" and len_b is not None:
        raise ValueError(
            f"return_overflowing_tokens=True is not possible for a pair of sequences ({name}) with "
            "truncation='longest_first' (transformers refuses it too); pass truncation='only_first' or 'only_second'"
        )
    if strategy == "only_second" and len_b is None:
        raise ValueError(
            f"truncation='only_second' with return_overflowing_tokens=True needs a text_pair ({name} has none); "
            "pass truncation='only_first' or True"
        )
    which = "b" if strategy == "only_second" else "a"
    other = (len_a if which == "b" else (len_b or 0)) if len_b is not None else 0
    size = max_length - n_special - other
    if size <= stride:
        raise ValueError(
            f"cannot make overflowing windows for {name}: max_length={max_length} leaves {max(size, 0)} token(s) "
            f"per window for the {'second' if which == 'b' else 'first'} sequence (after {n_special} special tokens"
            + (f" and the other sequence's {other}" if other else "")
            + f"), which must be more than stride={stride}; raise max_length or lower stride"
        )
    return which, size
