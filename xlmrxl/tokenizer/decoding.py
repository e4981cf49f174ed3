"""Ids back to text: ``decode`` / ``batch_decode`` (the slow tokenizer's rules) and transformers'
``clean_up_tokenization``."""

from __future__ import annotations

from typing import Any

from .checks import refuse_unknown


class DecodeMixin:
    """``decode`` and ``batch_decode``; the class using it provides ``convert_ids_to_tokens``,
    ``convert_tokens_to_string`` and ``clean_up_tokenization_spaces``."""

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        spaces_between_special_tokens: bool = True,
        use_source_tokenizer: bool = False,
        **kwargs: Any,
    ) -> str:
        """Text of ``token_ids`` (int, list or tensor): pieces joined, ``▁`` -> space, ends stripped.
        ``spaces_between_special_tokens`` and ``use_source_tokenizer`` only concern added (non-special) tokens,
        which this tokenizer has none of: they change nothing, as in transformers."""
        refuse_unknown("XLMRobertaTokenizer.decode", kwargs)
        ids = to_py(token_ids)
        if isinstance(ids, int):
            ids = [ids]
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens) if tokens else ""
        clean = (
            self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        )
        return clean_up_tokenization(text) if clean else text

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """``decode`` of each sequence (the keywords are ``decode``'s)."""
        seqs = to_py(sequences)
        return [
            self.decode(
                s,
                skip_special_tokens=skip_special_tokens,
                clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                **kwargs,
            )
            for s in seqs
        ]


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop the space before punctuation and English contractions."""
    for a, b in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(a, b)
    return text


def to_py(x: Any) -> Any:
    """Tensors / numpy arrays / nested lists -> python ints and lists."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [to_py(v) for v in x]
    return int(x)
