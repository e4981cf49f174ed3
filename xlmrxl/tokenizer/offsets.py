"""Character offsets of tokens (``return_offsets_mapping=True``) exactly as transformers' fast XLM-R tokenizer gives
them. It normalizes a text with the model's character map (char by char, keeping each output char aligned to its
input char), strips the right end, turns runs of spaces into one ``▁`` (aligned to the run's last space), single
spaces into ``▁``, prepends ``▁`` (aligned to the first char), and a token spans its chars' alignments. We rebuild
that normalized string and walk our SentencePiece pieces over it; where the rebuild is not certain to be the fast
tokenizer's (a grapheme cluster the map changes, a removed char it cannot attach), the offsets are refused."""

from __future__ import annotations

import unicodedata
from typing import Any

from .checks import UnsupportedArgument

SPIECE_UNDERLINE = "\u2581"
# Unicode White_Space (Rust's char::is_whitespace, used by the fast tokenizer's Strip)
WHITE_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(chr(c) for c in range(0x2000, 0x200B))


class Normalizer:
    """The model's character map, applied one char (or one short cluster) at a time, with a cache."""

    def __init__(self, vocab_file: str):
        import sentencepiece as spm

        self._norm = spm.SentencePieceNormalizer(
            model_file=vocab_file, add_dummy_prefix=False, escape_whitespaces=False, remove_extra_whitespaces=False
        )
        self._cache: dict[str, str] = {}

    def __call__(self, s: str) -> str:
        out = self._cache.get(s)
        if out is None:
            out = self._cache[s] = self._norm.normalize(s)
        return out


def _control(c: str) -> bool:
    cat = unicodedata.category(c)
    return cat in ("Cc", "Zl", "Zp") or (cat == "Cf" and c not in "\u200c\u200d")


def _extends(c: str, prev: str) -> bool:
    """Whether ``c`` continues the grapheme cluster of ``prev`` (marks, joiners, selectors, skin tones, CR LF)."""
    if c == "\n" and prev == "\r":
        return True
    if _control(prev) or _control(c):  # nothing joins a control char (CR, LF, Cc, Zl, Zp, Cf but the joiners)
        return False
    o = ord(c)
    return (
        unicodedata.category(c).startswith("M")
        or o in (0x200C, 0x200D)
        or 0xFE00 <= o <= 0xFE0F
        or 0xE0100 <= o <= 0xE01EF
        or 0x1F3FB <= o <= 0x1F3FF
        or 0x1160 <= o <= 0x11FF  # Hangul jamo vowels / finals join the syllable before them
    )


def _refuse(where: str, why: str) -> UnsupportedArgument:
    return UnsupportedArgument(
        f"return_offsets_mapping=True: exact offsets (those of transformers' fast tokenizer) cannot be given for "
        f"{where}: {why}. Pass return_offsets_mapping=False, or normalize the text first (unicodedata.normalize("
        "'NFKC', text))"
    )


def _clusters(text: str) -> list[tuple[int, int]]:
    """``(start, stop)`` of each (approximate) grapheme cluster of ``text``."""
    out: list[tuple[int, int]] = []
    for k, c in enumerate(text):
        if out and _extends(c, text[k - 1]):
            out[-1] = (out[-1][0], k + 1)
        else:
            out.append((k, k + 1))
    return out


def _entry(norm: Normalizer, cluster: str) -> str | None:
    """The shortest prefix of ``cluster`` the character map has an entry for (None: none, map char by char)."""
    if norm(cluster[0]) != cluster[0]:
        return cluster[0]
    for j in range(2, len(cluster) + 1):
        p = cluster[:j]
        if norm(p) != "".join(norm(x) for x in p):
            return p
    return None


def fast_normalized(norm: Normalizer, text: str, where: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The fast tokenizer's normalized ``text`` (a list of chars) and each char's ``(start, end)`` in ``text``.

    As the fast tokenizer does: a cluster under 6 bytes is replaced as a whole by the map's entry for its shortest
    mapped prefix (a CR LF becomes the one space CR maps to, e + U+0301 becomes é); anything else char by char.
    Each replacement of n chars by m chars is a list of changes (the last m - n chars are insertions; a shrink is
    booked on the last change made so far, even one of an earlier replacement) which then consume the input chars
    in order: a char takes the alignment of the input char it consumes, an insertion that of the one before. A
    char mapped to nothing at the very start is never consumed, which shifts the alignments after it by one (the
    fast tokenizer's own quirk, reproduced)."""
    changes: list[list] = []  # [char, change]: 0 replaces one input char, 1 is inserted, -k also removes k more
    for start, stop in _clusters(text):
        cluster = text[start:stop]
        key = _entry(norm, cluster) if stop - start > 1 and len(cluster.encode("utf-8")) < 6 else None
        parts = [(cluster, norm(key))] if key is not None else [(c, norm(c)) for c in cluster]
        for old, new in parts:
            changes.extend([c, 0] for c in new)
            diff = len(new) - len(old)
            if diff > 0:
                for ch in changes[-diff:]:
                    ch[1] = 1
            elif diff < 0 and changes:
                changes[-1][1] += diff
    chars: list[str] = []
    align: list[tuple[int, int]] = []
    cursor = 0
    for c, change in changes:
        if change > 0:
            align.append((cursor - 1, cursor) if cursor else (0, 0))
        else:
            if cursor >= len(text):
                raise _refuse(where, "its normalization consumes more characters than it has")
            align.append((cursor, cursor + 1))
            cursor += 1 - change
        chars.append(c)
    while chars and chars[-1] in WHITE_SPACE:  # Strip(right)
        chars.pop()
        align.pop()
    out_c: list[str] = []
    out_a: list[tuple[int, int]] = []
    i = 0
    while i < len(chars):  # runs of 2+ spaces -> one "▁" on the run's last space; one space -> "▁"
        if chars[i] == " ":
            j = i
            while j + 1 < len(chars) and chars[j + 1] == " ":
                j += 1
            out_c.append(SPIECE_UNDERLINE)
            out_a.append(align[j])
            i = j + 1
        else:
            out_c.append(chars[i])
            out_a.append(align[i])
            i += 1
    if out_c and out_c[0] != SPIECE_UNDERLINE:
        out_c.insert(0, SPIECE_UNDERLINE)
        out_a.insert(0, out_a[0])
    return out_c, out_a


def piece_offsets(norm: Normalizer, sp_model: Any, chunk: str, where: str) -> list[tuple[int, tuple[int, int]]]:
    """``(sentencepiece id, (start, end))`` of each piece of ``chunk`` (a text with no special token in it), the
    offsets counted in characters of ``chunk``."""
    pieces = list(sp_model.encode(chunk, return_type="proto").pieces)
    chars, align = fast_normalized(norm, chunk, where)
    if "".join(p.piece for p in pieces) != "".join(chars):
        raise _refuse(where, "its normalization differs from the one the fast tokenizer makes")
    out = []
    pos = 0
    for p in pieces:
        n = len(p.piece)
        if pos + n > len(align) or n == 0:
            raise _refuse(where, "its pieces do not cover the normalized text")
        out.append((p.id, (align[pos][0], align[pos + n - 1][1])))
        pos += n
    if pos != len(align):
        raise _refuse(where, "its pieces do not cover the normalized text")
    return out
