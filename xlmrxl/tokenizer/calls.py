"""The tokenizer's encoding entry points (``__call__``, ``encode``, ``encode_plus``, ``batch_encode_plus``, ``pad``),
taking every keyword argument transformers 4.56.2's ``XLMRobertaTokenizer`` takes: each is honoured with
transformers' result, or refused by name (``UnsupportedArgument``, a TypeError); none is dropped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .checks import UnsupportedArgument, check_int, refuse_unknown
from .encoding import BatchEncoding, collate, convert
from .inputs import split_inputs, split_words
from .overflow import overflow_size, windows
from .padding import pad_encoded, pad_row, pad_target
from .strategies import resolve_strategies
from .truncation import truncate

logger = logging.getLogger("xlmrxl")

TENSOR_TYPES = (None, "pt", "np")


class _Ids(list):
    """Token ids given to ``prepare_for_model``: a text already tokenized."""


def check_tensors(return_tensors: Any) -> str | None:
    """``return_tensors`` if we can make it (None, 'pt', 'np'); refused by name otherwise ('tf', 'jax', 'mlx')."""
    if return_tensors not in TENSOR_TYPES:
        raise UnsupportedArgument(
            f"return_tensors={return_tensors!r} is not supported; use None (lists), 'pt' (torch) or 'np' (numpy)"
        )
    return return_tensors


class EncodeMixin:
    """``__call__`` and its relatives; the class using it provides ``_encode_text``, ``_encode_offsets``, the
    special-token helpers and the settings (``padding_side``, ``truncation_side``, ``model_max_length``)."""

    def __call__(
        self,
        text: None | str | Sequence[Any] = None,
        text_pair: None | str | Sequence[Any] = None,
        text_target: None | str | Sequence[Any] = None,
        text_pair_target: None | str | Sequence[Any] = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: None | bool | str = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        split_special_tokens: bool | None = None,
        max_target_length: int | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode one text, a pair, or a batch (list) of texts / pairs; ``text_target`` (and ``text_pair_target``)
        are encoded with the same settings (``max_length=max_target_length`` when given) into ``labels``.
        ``tokenizer_kwargs`` (transformers 5) is a dict of more keywords, which win over the others as there. See
        tokenizer.py's docstring for the rules."""
        refuse_unknown("XLMRobertaTokenizer.__call__", kwargs)
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        opts = dict(
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            is_split_into_words=is_split_into_words,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            verbose=verbose,
            split_special_tokens=split_special_tokens,
        )
        if tokenizer_kwargs:
            if not isinstance(tokenizer_kwargs, dict):
                raise TypeError(f"tokenizer_kwargs must be a dict, got {type(tokenizer_kwargs).__name__}")
            more = dict(opts, max_target_length=max_target_length, **kwargs)
            more.update(tokenizer_kwargs)
            return self(text, text_pair, text_target, text_pair_target, **more)
        if text is None and text_target is None:
            raise ValueError("pass text (the input) or text_target (the labels), or both")
        if text is None and text_pair is not None:
            raise ValueError("text_pair was given without text; pass text too")
        if text_target is None and text_pair_target is not None:  # transformers drops it silently
            raise ValueError("text_pair_target was given without text_target; pass text_target too")
        enc = self._encode(text, text_pair, **opts) if text is not None else None
        if text_target is None:
            return enc
        if max_target_length is not None:  # the strategies come from the input's settings, the length differs
            pad, trunc, max_length = resolve_strategies(
                padding, truncation, max_length, pad_to_multiple_of, self.model_max_length, False
            )
            opts.update(padding=pad, truncation=trunc, max_length=check_int("max_target_length", max_target_length, 0))
        target = self._encode(text_target, text_pair_target, **opts)
        if enc is None:
            return target
        enc["labels"] = target["input_ids"]
        return enc

    def encode(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: None | bool | str = None,
        max_length: int | None = None,
        stride: int = 0,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ):
        """Ids of one text (or pair), as a list (or a (1, L) tensor with ``return_tensors``); the other keywords
        are ``encode_plus``'s."""
        return self.encode_plus(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            padding_side=padding_side,
            return_tensors=return_tensors,
            **kwargs,
        )["input_ids"]

    def encode_plus(
        self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, **kwargs: Any
    ) -> BatchEncoding:
        """One text (or pair; with ``is_split_into_words=True`` a list of words) encoded as ``__call__`` does."""
        words = kwargs.get("is_split_into_words", False)
        for name, value in (("text", text), ("text_pair", text_pair)):
            if isinstance(value, (list, tuple)) and not (words and all(isinstance(w, str) for w in value)):
                raise TypeError(
                    f"encode() / encode_plus() take one {name} (a str); call the tokenizer itself (or "
                    "batch_encode_plus) on a list of texts"
                )
        if "text_target" in kwargs or "text_pair_target" in kwargs:
            refuse_unknown("encode_plus", {k: kwargs[k] for k in ("text_target", "text_pair_target") if k in kwargs})
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs: Sequence[Any], **kwargs: Any) -> BatchEncoding:
        """A list of texts, or of ``(text, pair)`` tuples, encoded as ``__call__`` encodes a batch."""
        if not isinstance(batch_text_or_text_pairs, (list, tuple)):
            raise TypeError(
                f"batch_text_or_text_pairs must be a list or tuple, got {type(batch_text_or_text_pairs).__name__}"
            )
        if "text_target" in kwargs or "text_pair_target" in kwargs:
            refuse_unknown(
                "batch_encode_plus", {k: kwargs[k] for k in ("text_target", "text_pair_target") if k in kwargs}
            )
        items = list(batch_text_or_text_pairs)
        if items and all(isinstance(x, tuple) and len(x) == 2 for x in items):
            return self([x[0] for x in items], [x[1] for x in items], **kwargs)
        return self(items, **kwargs)

    def pad(
        self,
        encoded_inputs: Any,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pad already encoded inputs (one dict, a dict of lists, or a list of dicts), as transformers' ``pad``."""
        side = self._check_side("padding_side", padding_side) if padding_side is not None else self.padding_side
        return pad_encoded(
            encoded_inputs,
            padding,
            max_length,
            pad_to_multiple_of,
            side,
            return_attention_mask,
            check_tensors(return_tensors),
            self.pad_token_id,
            self.pad_token_type_id,
            self.model_max_length,
        )

    def prepare_for_model(
        self,
        ids: Sequence[int],
        pair_ids: Sequence[int] | None = None,
        *,
        prepend_batch_axis: bool = False,
        return_overflowing_tokens: bool = False,
        return_offsets_mapping: bool = False,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Ids (and pair ids) already tokenized, made a model input as ``__call__`` makes one text's (special
        tokens, truncation, padding, tensors: 1-D unless ``prepend_batch_axis``). Overflow and offsets are refused:
        transformers gives its slow layout (``overflowing_tokens``) here, and has no offsets for ids."""
        if return_overflowing_tokens or return_offsets_mapping:
            refuse_unknown(
                "prepare_for_model",
                {
                    k: True
                    for k, v in (
                        ("return_overflowing_tokens", return_overflowing_tokens),
                        ("return_offsets_mapping", return_offsets_mapping),
                    )
                    if v
                },
                "call the tokenizer on the text for overflowing windows or offsets",
            )
        for k in ("text_target", "text_pair_target", "is_split_into_words", "tokenizer_kwargs", "max_target_length"):
            if k in kwargs:
                refuse_unknown("prepare_for_model", {k: kwargs[k]})
        for name, value in (("ids", ids), ("pair_ids", pair_ids)):
            if value is not None and not all(isinstance(i, int) or hasattr(i, "__index__") for i in value):
                raise TypeError(f"prepare_for_model takes {name} as a list of token ids (int)")
        a = _Ids(int(i) for i in ids)
        b = _Ids(int(i) for i in pair_ids) if pair_ids is not None else None
        enc = self(a, b, **kwargs)
        if kwargs.get("return_tensors") is not None and not prepend_batch_axis:
            one = BatchEncoding({k: v[0] for k, v in enc.items()})
            one.set_sequence_ids([enc.sequence_ids(0)])
            return one
        return enc

    # -- the work -----------------------------------------------------------------------------------------------
    def _encode(
        self,
        text,
        text_pair,
        *,
        add_special_tokens,
        padding,
        truncation,
        max_length,
        stride,
        is_split_into_words,
        pad_to_multiple_of,
        padding_side,
        return_tensors,
        return_token_type_ids,
        return_attention_mask,
        return_overflowing_tokens,
        return_special_tokens_mask,
        return_offsets_mapping,
        return_length,
        verbose,
        split_special_tokens,
    ) -> BatchEncoding:
        check_tensors(return_tensors)
        side = self._check_side("padding_side", padding_side) if padding_side is not None else self.padding_side
        stride = check_int("stride", stride, 0)
        if isinstance(text, _Ids):  # prepare_for_model: ids already
            batched, texts, pairs, names, paired = False, [text], [text_pair], ["ids"], text_pair is not None
        elif is_split_into_words:
            if return_offsets_mapping:
                raise UnsupportedArgument(
                    "return_offsets_mapping=True with is_split_into_words=True is not supported; join the words "
                    "into a text, or drop one of the two"
                )
            batched, texts, pairs, names, paired = split_words(text, text_pair)
        else:
            batched, texts, pairs, names, paired = split_inputs(text, text_pair)
        pad, trunc, max_length = resolve_strategies(
            padding, truncation, max_length, pad_to_multiple_of, self.model_max_length, verbose
        )
        if trunc != "do_not_truncate" and max_length is not None and texts:
            need = self.num_special_tokens_to_add(paired) if add_special_tokens else 0
            if max_length < max(need, 1):
                raise ValueError(
                    f"truncation to max_length={max_length} is impossible: "
                    + (f"{'a pair' if paired else 'a text'} takes {need} special tokens" if need else "")
                    + (" alone; " if need else "no tokens would be left; ")
                    + f"pass max_length >= {max(need, 1)} (XLM-R models take up to 512), or truncation=False"
                )
        if return_overflowing_tokens and trunc != "do_not_truncate" and max_length is not None:
            room = max_length - self.num_special_tokens_to_add(False)
            if stride > room:  # the fast tokenizer's check, made whether or not an input overflows
                raise ValueError(
                    f"stride={stride} is more than the {room} tokens a window of max_length={max_length} holds "
                    f"(after 2 special tokens); pass a stride below {max(room, 1)} or a larger max_length"
                )
        if trunc == "only_second" and any(p is None for p in pairs) and verbose and not return_overflowing_tokens:
            # transformers silently keeps such inputs whole; say so once
            logger.warning("xlmrxl: truncation='only_second' does not truncate inputs that have no text_pair")
        want_mask = bool(return_attention_mask) if return_attention_mask is not None else True
        flags = dict(
            special=add_special_tokens,
            tt=bool(return_token_type_ids),
            stm=bool(return_special_tokens_mask),
            offsets=bool(return_offsets_mapping),
            verbose=verbose,
        )
        rows, mapping = [], []
        for i, (t, p) in enumerate(zip(texts, pairs)):
            a = self._pieces(t, split_special_tokens, flags["offsets"])
            b = self._pieces(p, split_special_tokens, flags["offsets"]) if p is not None else None
            name = names[i] if batched else "the input"
            if return_overflowing_tokens:
                new = self._windows(a, b, trunc, max_length, stride, flags, name)
            else:
                new = [self._row(a, b, trunc, max_length, flags, name)]
            rows += new
            mapping += [i] * len(new)
        target = pad_target([len(e["input_ids"]) for e in rows], pad, max_length, pad_to_multiple_of)
        padded, seq_ids = [], []
        for e in rows:
            n = len(e["input_ids"])
            sid = e.pop("_sequence_ids")
            if target is not None:
                e = pad_row(e, target, want_mask, side, self.pad_token_id, self.pad_token_type_id)
                gap = [None] * (len(e["input_ids"]) - n)
                sid = sid + gap if side == "right" else gap + sid
            elif want_mask:
                e = dict(e, attention_mask=[1] * n)
            seq_ids.append(sid)
            if return_length:
                # as the slow tokenizer: a batch reports unpadded lengths, a single input its padded one; with
                # overflowing windows (the fast tokenizer's layout) every window reports its padded length
                e["length"] = n if batched and not return_overflowing_tokens else len(e["input_ids"])
            padded.append(e)
        if return_overflowing_tokens:
            out = collate(padded, want_mask, None, True)
            out["overflow_to_sample_mapping"] = mapping
            out = convert(out, return_tensors)
        else:
            out = collate(padded, want_mask, return_tensors, batched)
        out.set_sequence_ids(seq_ids)
        return out

    def _pieces(self, text, split_special_tokens: bool, offsets: bool) -> tuple[list[int], list | None]:
        """Ids of one text (a list of words: their ids joined) and, when asked, each token's character offsets."""
        if isinstance(text, _Ids):
            return list(text), None
        if isinstance(text, list):
            return [i for w in text for i in self._encode_text(w, split_special_tokens)], None
        if offsets:
            return self._encode_offsets(text, split_special_tokens)
        return self._encode_text(text, split_special_tokens), None

    def _build(self, a, b, ids_a, ids_b, flags) -> dict[str, list]:
        """One row from the kept positions ``ids_a`` / ``ids_b`` of texts ``a`` / ``b`` (``(ids, offsets)``)."""
        first = [a[0][j] for j in ids_a]
        second = [b[0][j] for j in ids_b] if b is not None else None
        if flags["special"]:
            seq = self.build_inputs_with_special_tokens(first, second)
            special = self.get_special_tokens_mask(first, second)
        else:
            seq = first + (second or [])
            special = [0] * len(seq)
        out = {"input_ids": seq}
        if flags["special"]:
            out["_sequence_ids"] = [None, *[0] * len(first), None] + (
                [None, *[1] * len(second), None] if second is not None else []
            )
        else:
            out["_sequence_ids"] = [0] * len(first) + [1] * len(second or [])
        if flags["tt"]:
            out["token_type_ids"] = [0] * len(seq)
        if flags["stm"]:
            out["special_tokens_mask"] = special
        if flags["offsets"]:
            oa = [a[1][j] for j in ids_a]
            ob = [b[1][j] for j in ids_b] if b is not None else None
            if flags["special"]:
                none = (0, 0)
                out["offset_mapping"] = [none] + oa + [none] + ([none] + ob + [none] if ob is not None else [])
            else:
                out["offset_mapping"] = oa + (ob or [])
        return out

    def _row(self, a, b, trunc, max_length, flags, name) -> dict[str, list]:
        """The row of text ``a`` (and pair ``b``), truncated by transformers' slow rules."""
        ia, ib = list(range(len(a[0]))), list(range(len(b[0]))) if b is not None else None
        total = len(ia) + (len(ib) if ib is not None else 0)
        if flags["special"]:
            total += self.num_special_tokens_to_add(b is not None)
        if trunc != "do_not_truncate" and max_length is not None and total > max_length:
            ia, ib = truncate(ia, ib, total - max_length, trunc, self.truncation_side, name)
        out = self._build(a, b, ia, ib, flags)
        if max_length is None and len(out["input_ids"]) > self.model_max_length and flags["verbose"]:
            logger.warning(
                "xlmrxl: sequence of %d tokens is longer than model_max_length=%d; the model will fail "
                "on it. Pass truncation=True.",
                len(out["input_ids"]),
                self.model_max_length,
            )
        return out

    def _windows(self, a, b, trunc, max_length, stride, flags, name) -> list[dict[str, list]]:
        """Every overflowing window of text ``a`` (and pair ``b``), as transformers' fast tokenizer makes them."""
        n_special = self.num_special_tokens_to_add(b is not None) if flags["special"] else 0
        la, lb = len(a[0]), (len(b[0]) if b is not None else None)
        if trunc == "do_not_truncate" or max_length is None or la + (lb or 0) + n_special <= max_length:
            return [self._row(a, b, "do_not_truncate", max_length, flags, name)]
        which, size = overflow_size(max_length, n_special, stride, trunc, la, lb, name)
        n = la if which == "a" else lb
        rows = []
        for start, stop in windows(n, size, stride, self.truncation_side):
            part = list(range(start, stop))
            if which == "a":
                rows.append(self._build(a, b, part, list(range(lb)) if b is not None else None, flags))
            else:
                rows.append(self._build(a, b, list(range(la)), part, flags))
        return rows
