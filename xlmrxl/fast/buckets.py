"""CUDA-graph buckets: the token-count ladder, segment buckets, and the inert-padding rule for ``cu_seqlens``.

See ``xlmrxl.fast.graphs`` (the runners) for why the ladder is 16, 24, 32, 48, ... and how pad rows stay inert.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["token_buckets", "ceil_bucket", "segment_bucket", "PackedBucket", "plan_packed_bucket", "pad_cu_seqlens"]


def token_buckets(max_tokens: int = 4096, min_tokens: int = 16) -> tuple[int, ...]:
    """16, 24, 32, 48, 64, 96, ... up to ``max_tokens`` (its own last bucket when it is not on the ladder)."""
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"token buckets need 1 <= min_tokens <= max_tokens, got {min_tokens} and {max_tokens}")
    out: list[int] = []
    p = 1
    while p < min_tokens:
        p *= 2
    while True:
        for v in (p, p + p // 2) if p >= 2 else (p,):
            if v < min_tokens:
                continue
            if v >= max_tokens:
                out.append(max_tokens)
                return tuple(out)
            out.append(v)
        p *= 2


def ceil_bucket(n: int, ladder: Sequence[int]) -> int | None:
    """The smallest bucket >= n, or None when n exceeds the ladder."""
    i = bisect.bisect_left(ladder, n)
    return ladder[i] if i < len(ladder) else None


def segment_bucket(n: int) -> int:
    """Segments (``cu_seqlens`` intervals) round up to a power of two, at least 2 (room for one pad segment)."""
    b = 2
    while b < n:
        b *= 2
    return b


class PackedBucket(tuple):
    """``(tokens, segments, seqlen)``: the static shape one graph is captured for."""

    __slots__ = ()

    def __new__(cls, tokens: int, segments: int, seqlen: int):
        return super().__new__(cls, (tokens, segments, seqlen))

    tokens = property(lambda self: self[0])
    segments = property(lambda self: self[1])
    seqlen = property(lambda self: self[2])


def plan_packed_bucket(
    num_tokens: int, batch: int, max_seqlen: int | None, ladder: Sequence[int], max_segments: int
) -> PackedBucket | None:
    """The bucket for ``num_tokens`` real rows in ``batch`` sequences, or None when it does not fit.

    ``max_seqlen`` None (unknown on the host) bounds segments by the token bucket."""
    tb = ceil_bucket(max(num_tokens, 1), ladder)
    if tb is None:
        return None
    sb = tb if max_seqlen is None else min(tb, ceil_bucket(max(int(max_seqlen), 1), ladder) or tb)
    pad_segments = -(-(tb - num_tokens) // sb)
    bb = segment_bucket(batch + max(pad_segments, 1))
    if bb > max_segments:
        return None
    return PackedBucket(tb, bb, sb)


def pad_cu_seqlens(cu_seqlens: Sequence[int], bucket: PackedBucket) -> list[int]:
    """Host-side statement of the padding rule (tests and docs): the real offsets, then the pad rows in segments of
    at most ``bucket.seqlen`` rows, then empty segments, ``bucket.segments + 1`` offsets in all."""
    cu = list(cu_seqlens)
    t = cu[-1]
    tail = [min(t + j * bucket.seqlen, bucket.tokens) for j in range(1, bucket.segments - len(cu) + 2)]
    return cu + tail
