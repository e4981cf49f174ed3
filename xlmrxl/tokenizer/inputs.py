"""The tokenizer's text arguments: one text, a pair, a batch of texts or of (text, pair) tuples, turned into lists of
texts and pairs, each checked and named for errors (``text[3]``, ``text_pair[1]``)."""

from __future__ import annotations

from collections.abc import Sequence

from .checks import check_text


def split_inputs(
    text: str | Sequence[str], text_pair: None | str | Sequence[str]
) -> tuple[bool, list[str], list[str | None], list[str], bool]:
    """``(batched, texts, pairs, names, paired)``: the texts and their pairs (None where there is none), the name of
    each text in errors, and whether the inputs are pairs (then every pair must be a str)."""
    batched = isinstance(text, (list, tuple))
    if batched:
        texts = list(text)
        names = [f"text[{i}]" for i in range(len(texts))]
        pair_names = [f"text_pair[{i}]" for i in range(len(texts))]
        if text_pair is None and texts and all(isinstance(t, (list, tuple)) and len(t) == 2 for t in texts):
            texts, pairs = [t[0] for t in texts], [t[1] for t in texts]  # a batch of (text, pair) tuples
            names = [f"text[{i}][0]" for i in range(len(texts))]
            pair_names = [f"text[{i}][1]" for i in range(len(texts))]
        elif text_pair is None:
            pairs: list[str | None] = [None] * len(texts)
        elif isinstance(text_pair, (list, tuple)) and len(text_pair) == len(texts):
            pairs = list(text_pair)
        else:
            raise ValueError(
                f"text is a batch of {len(texts)} texts, so text_pair must be a list of the same "
                f"length (got {type(text_pair).__name__}"
                f"{' of ' + str(len(text_pair)) if isinstance(text_pair, (list, tuple)) else ''})"
            )
    else:
        if isinstance(text_pair, (list, tuple)):
            raise ValueError("text is a single string but text_pair is a list; pass a list for text as well")
        texts, pairs = [text], [text_pair]
        names, pair_names = ["text"], ["text_pair"]
    paired = any(p is not None for p in pairs)  # then every input needs its pair: a None there is an error
    for t, p, name, pname in zip(texts, pairs, names, pair_names):
        check_text(t, name)
        if paired or (batched and text_pair is not None):
            check_text(p, pname)
    return batched, texts, pairs, names, paired


def _words(x, where: str) -> list[str]:
    if not isinstance(x, (list, tuple)):
        raise TypeError(
            f"{where} is {type(x).__name__} ({x!r:.40}); with is_split_into_words=True each text is a list of "
            "words (str)"
        )
    return [check_text(w, f"{where}[{j}]") for j, w in enumerate(x)]


def split_words(
    text: Sequence, text_pair: None | Sequence
) -> tuple[bool, list[list[str]], list[list[str] | None], list[str], bool]:
    """``split_inputs`` for ``is_split_into_words=True``: a text is a list of words, a batch a list of such lists
    (transformers' rule: a batch when the first item is itself a list)."""
    batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
    if not batched:
        texts = [_words(text, "text")]
        pairs = [_words(text_pair, "text_pair") if text_pair is not None else None]
        return False, texts, pairs, ["text"], pairs[0] is not None
    texts = [_words(t, f"text[{i}]") for i, t in enumerate(text)]
    if text_pair is None:
        return True, texts, [None] * len(texts), [f"text[{i}]" for i in range(len(texts))], False
    if not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(texts):
        raise ValueError(f"text is a batch of {len(texts)} word lists, so text_pair must be a list of as many")
    pairs = [_words(p, f"text_pair[{i}]") for i, p in enumerate(text_pair)]
    return True, texts, pairs, [f"text[{i}]" for i in range(len(texts))], True
