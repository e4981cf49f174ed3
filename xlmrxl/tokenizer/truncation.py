"""Truncating a text (or pair) of ids by a number of tokens, under the ``longest_first`` / ``only_first`` /
``only_second`` strategies, as transformers' slow tokenizer does."""

from __future__ import annotations

import logging

logger = logging.getLogger("xlmrxl")


def truncate(
    ids: list[int], pair_ids: list[int] | None, n: int, strategy: str, side: str, name: str = "the input"
) -> tuple[list[int], list[int] | None]:
    """Remove ``n`` tokens from ``ids`` / ``pair_ids`` by ``strategy``, at the end (``side="right"``) or the start."""
    # A side too short to lose n tokens: logged and left whole, as the slow tokenizer does (fast raises). A side
    # of exactly n tokens is emptied (fast's result; slow refuses it, an off-by-one that would leave the input
    # longer than max_length).
    if n <= 0:
        return ids, pair_ids
    right = side == "right"
    if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
        if len(ids) >= n:
            ids = ids[: len(ids) - n] if right else ids[n:]
        else:
            logger.error(
                "xlmrxl: cannot truncate %s: %d tokens must go but the first sequence has only %d%s",
                name,
                n,
                len(ids),
                "; try truncation='longest_first' or 'only_second'" if strategy == "only_first" else "",
            )
    elif strategy == "longest_first":
        lp, li = len(pair_ids), len(ids)
        first = min(abs(lp - li), n)
        second = n - first
        if li > lp:
            cut_a, cut_b = first + second // 2, second - second // 2
        else:
            cut_a, cut_b = second // 2, first + second - second // 2
        if right:
            ids = ids[:-cut_a] if cut_a > 0 else ids
            pair_ids = pair_ids[:-cut_b] if cut_b > 0 else pair_ids
        else:
            ids, pair_ids = ids[cut_a:], pair_ids[cut_b:]
    elif strategy == "only_second" and pair_ids is not None:
        if len(pair_ids) >= n:
            pair_ids = pair_ids[: len(pair_ids) - n] if right else pair_ids[n:]
        else:
            logger.error(
                "xlmrxl: cannot truncate %s: %d tokens must go but the second sequence has only %d; try "
                "truncation='longest_first' or 'only_first'",
                name,
                n,
                len(pair_ids),
            )
    return ids, pair_ids
