"""Checks of the tokenizer's arguments: ints (lengths, multiples) and texts, each error naming the input and the fix."""

from __future__ import annotations

import operator
from typing import Any


def check_int(name: str, value: Any, low: int, where: str = "") -> int:
    """``value`` as an int >= ``low`` (ints, integral floats such as transformers' 1e30 "no limit"); else an error
    naming the argument (and the file it came from)."""
    src = f" in {where!r}" if where else ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints, numpy / torch integer scalars
    except TypeError:
        raise TypeError(f"{name}{src} must be an int, got {type(value).__name__} {value!r:.40}") from None
    if value < low:
        raise ValueError(f"{name}={value}{src} is out of range; it must be >= {low}")
    return int(value)


def check_text(text: Any, where: str) -> str:
    """``text`` if it is a str SentencePiece can encode; a TypeError / ValueError naming the input otherwise."""
    if not isinstance(text, str):
        raise TypeError(
            f"{where} is {type(text).__name__} ({text!r:.40}); the tokenizer takes a str, a list of str, or a "
            "list of (str, str) pairs"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} holds a lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}: not a Unicode "
            "character, so it cannot be tokenized. It usually comes from bytes decoded with "
            "errors='surrogateescape' or a JSON escape such as '\\ud800'; fix the source, or replace it with "
            "text.encode('utf-8', 'replace').decode('utf-8')"
        ) from None
    return text


class UnsupportedArgument(TypeError, ValueError):
    """A keyword argument (or value) transformers takes that this tokenizer does not implement: refused by name
    rather than dropped. A TypeError, like any unexpected keyword; also a ValueError for bad values."""


def refuse_unknown(where: str, kwargs: dict[str, Any], fix: str = "") -> None:
    """Raise ``UnsupportedArgument`` naming every keyword in ``kwargs`` (the ones ``where`` does not implement)."""
    if kwargs:
        names = ", ".join(f"{k}={v!r:.40}" for k, v in sorted(kwargs.items()))
        raise UnsupportedArgument(
            f"{where} got keyword argument(s) it does not implement: {names}. They are refused rather than ignored; "
            + (fix or "drop them, or use transformers' tokenizer for them")
        )


# transformers' loading options: where to find the files, which have no meaning for a local directory
LOADING_OPTIONS = frozenset(
    "cache_dir force_download local_files_only token revision trust_remote_code use_fast subfolder resume_download "
    "proxies use_auth_token legacy_format _from_auto _commit_hash".split()
)


def check_init_kwargs(kwargs: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The constructor keywords that are accepted: transformers' loading options, and settings equal to this
    tokenizer's fixed ones (``defaults``: special tokens, ``sp_model_kwargs={}``...). Any other is refused."""
    bad = {}
    for k, v in kwargs.items():
        if k in LOADING_OPTIONS:
            continue
        if k in defaults:
            want = defaults[k]
            got = v.get("content") if isinstance(v, dict) and isinstance(want, str) else v
            if got == want or (got is None and want in ({}, None)):
                continue
        bad[k] = v
    refuse_unknown(
        "XLMRobertaTokenizer (from_pretrained / constructor)",
        bad,
        "XLM-R's special tokens and sentencepiece settings are fixed here; drop them, or use transformers' "
        "tokenizer for a changed vocabulary",
    )
    return dict(kwargs)
