"""XLM-RoBERTa tokenizer on the ``sentencepiece`` package, id-for-id equal to transformers 4.56.2's slow
``XLMRobertaTokenizer`` built from the same ``sentencepiece.bpe.model`` (no transformers needed at run time).

Contract
--------
- Files: ``sentencepiece.bpe.model`` (a *unigram* SentencePiece model despite its name), and optionally
  ``tokenizer_config.json`` / ``special_tokens_map.json`` (``model_max_length``, ``padding_side``,
  ``truncation_side``, ``clean_up_tokenization_spaces`` are read from them).
- fairseq id mapping: ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3; SentencePiece id i >= 3 -> i + 1 (SP's own
  ``<unk>``/``<s>``/``</s>`` ids 0/1/2 are replaced by the four specials); ``<mask>`` = sp_size + 1;
  ``len(tokenizer)`` = sp_size + 2.
- Formatting: single ``<s> A </s>``, pair ``<s> A </s></s> B </s>``; token_type_ids are all 0 and are returned only
  when asked (``return_token_type_ids=True``), like transformers.
- Special tokens written in the text (``<s>``, ``<pad>``, ``</s>``, ``<unk>``, ``<mask>``) are recognised as such.
  ``<mask>`` strips the whitespace on its left (``lstrip=True``), so ``"Hello <mask>!"`` and ``"Hello<mask>!"`` give
  the same ids; the text on each side of a special token is encoded separately by SentencePiece (so ``"!"`` after a
  mask becomes ``"▁" "!"``), exactly as transformers' slow and fast tokenizers both do.
- Padding (``False``/``True``/``"longest"``/``"max_length"``, ``pad_to_multiple_of``), truncation (``True`` /
  ``"longest_first"`` / ``"only_first"`` / ``"only_second"``) and ``max_length`` follow transformers' rules,
  including its defaults: ``max_length`` without ``truncation`` (and without padding) truncates ``longest_first``;
  ``truncation``/``padding="max_length"`` without ``max_length`` use ``model_max_length`` when one is set.
- ``decode`` joins the pieces, turns ``▁`` into spaces and strips the ends (the slow tokenizer's rule).
- Keywords (calls.py): every one transformers takes is honoured with its result or refused by name with
  ``UnsupportedArgument`` (a TypeError, and a ValueError); none is dropped. Honoured: ``padding_side`` per call,
  ``text_target`` / ``text_pair_target`` (encoded with the same settings into ``labels``), ``stride`` with
  ``return_overflowing_tokens``, ``return_offsets_mapping``, ``return_tensors`` None / ``'pt'`` / ``'np'``,
  ``is_split_into_words``, ``split_special_tokens``, ``verbose``, ``return_special_tokens_mask``,
  ``return_length``, ``return_token_type_ids``, ``return_attention_mask``, ``add_special_tokens``; ``encode``,
  ``encode_plus``, ``batch_encode_plus``, ``pad``, ``decode`` / ``batch_decode`` (``spaces_between_special_tokens``
  and ``use_source_tokenizer`` change nothing without added tokens, as in transformers), ``tokenize`` (with
  ``pair`` / ``add_special_tokens`` as the fast tokenizer's), ``prepare_for_model`` (``prepend_batch_axis``),
  transformers 5's ``tokenizer_kwargs`` and ``max_target_length``; ``BatchEncoding.sequence_ids(i)`` as fast's.
  Constructor / ``from_pretrained`` keywords: loading options are accepted, special tokens and ``sp_model_kwargs``
  only at XLM-R's values. Refused: ``return_tensors`` 'tf' / 'jax' / 'mlx', offsets with ``is_split_into_words``,
  ``save_pretrained(legacy_format=False / filename_prefix / push_to_hub)``, any keyword we do not know.
- Bad input is refused with an error naming it (both of transformers' tokenizers fail on these with messages that
  name neither): a text holding a lone surrogate (ValueError with the input, e.g. ``text_pair[3]``, and the
  position; transformers' slow tokenizer raises pybind11's "Unable to cast"), a non-str text (TypeError naming its
  index), truncation to a ``max_length`` below the special tokens (2 for a text, 4 for a pair, 1 without special
  tokens: slow logs and returns the input untruncated), a non-integer ``max_length`` / ``pad_to_multiple_of``; an
  empty, garbage, HTML or git-LFS-pointer ``sentencepiece.bpe.model`` and an invalid or non-object
  ``tokenizer_config.json`` / ``special_tokens_map.json`` (ValueError naming the file and the fix).

Where transformers 4.56.2's slow and fast tokenizers differ (we follow the slow, sentencepiece one; the tests pin
each point):
- ``truncation="longest_first"`` on a pair, when the two sides end up equally long and one token is left over: the
  slow tokenizer keeps it in the first text, the fast one in the second.
- a truncation that cannot be done (``"only_first"`` / ``"only_second"`` needing more tokens than that side has, or
  ``"only_second"`` without a pair): slow logs an error and returns the input untruncated; fast raises. A side of
  exactly the tokens to remove is emptied (fast's result; slow refuses it by one, leaving the input overlong).
- an empty batch gives empty lists (slow raises); ``return_length`` follows slow (a single input reports its padded
  length, a batch its unpadded ones).
- ``decode(..., skip_special_tokens=True)`` where a skipped ``<unk>`` follows a space: slow strips the ends
  (``"ok"``), fast keeps the space (``"ok "``).
- ``split_special_tokens=True``: slow honours it for one input but drops it for a batch, fast ignores it; we honour
  it everywhere (a batch gives what its inputs give one by one).
- What only fast does, we do as fast: ``return_overflowing_tokens=True`` gives every window (each overlapping the
  last by ``stride``; slow gives one window plus ``overflowing_tokens``), batched, with
  ``overflow_to_sample_mapping`` and padded ``length``s; a pair under ``longest_first`` is refused as slow refuses
  it (fast multiplies the two sides' windows). ``return_offsets_mapping=True`` (slow raises) gives fast's character
  offsets (offsets.py); refused for the rare text whose normalization fast makes otherwise than sentencepiece.
Everything else matches both: multilingual text, tabs, runs of spaces, leading/trailing spaces, NBSP, zero-width
spaces, full-width forms, special tokens in text, pairs, padding, batches.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .calls import EncodeMixin
from .checks import check_init_kwargs, check_int, check_text, refuse_unknown
from .decoding import DecodeMixin, to_py
from .files import (
    SPECIAL_TOKEN_ATTRS,
    VOCAB_FILE,
    added_token,
    load_sentencepiece,
    locate_vocab,
    read_settings,
    write_files,
)
from .offsets import WHITE_SPACE, Normalizer, piece_offsets
from .strategies import VERY_LARGE_INTEGER

logger = logging.getLogger("xlmrxl")

SPIECE_UNDERLINE = "\u2581"


class XLMRobertaTokenizer(EncodeMixin, DecodeMixin):
    """SentencePiece-backed XLM-RoBERTa tokenizer with transformers' API (see the module docstring)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    bos_token = "<s>"
    eos_token = "</s>"
    sep_token = "</s>"
    cls_token = "<s>"
    unk_token = "<unk>"
    pad_token = "<pad>"
    mask_token = "<mask>"
    fairseq_offset = 1

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        *,
        model_max_length: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        split_special_tokens: bool = False,
        **kwargs: Any,
    ):
        path = Path(vocab_file)
        self.vocab_file = str(path)
        self.sp_model = load_sentencepiece(path)
        self.sp_size = int(self.sp_model.GetPieceSize())
        self.model_max_length = (
            check_int("model_max_length", model_max_length, 1) if model_max_length is not None else VERY_LARGE_INTEGER
        )
        self.padding_side = self._check_side("padding_side", padding_side)
        self.truncation_side = self._check_side("truncation_side", truncation_side)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.split_special_tokens = bool(split_special_tokens)  # the default of every call, as in transformers
        fixed = dict(self.special_tokens_map, sp_model_kwargs={}, model_input_names=self.model_input_names)
        fixed.update(additional_special_tokens=[], added_tokens_decoder=None, extra_special_tokens={})
        fixed.update(tokenizer_class="XLMRobertaTokenizer", add_prefix_space=None, name_or_path=None)
        self.init_kwargs = check_init_kwargs(kwargs, fixed)

        self.fairseq_tokens_to_ids = {
            "<s>": 0,
            "<pad>": 1,
            "</s>": 2,
            "<unk>": 3,
            "<mask>": self.sp_size + self.fairseq_offset,
        }
        self.fairseq_ids_to_tokens = {v: k for k, v in self.fairseq_tokens_to_ids.items()}
        # Special tokens are matched in raw text, longest first (none is a prefix of another here).
        specials = sorted(self.fairseq_tokens_to_ids, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")
        self._lstrip = {"<mask>"}  # transformers gives <mask> lstrip=True; the others strip nothing
        self._normalizer = None  # built on the first return_offsets_mapping=True

    @staticmethod
    def _check_side(name: str, value: str) -> str:
        if value not in ("left", "right"):
            raise ValueError(f"{name}={value!r} is not valid; use 'left' or 'right'")
        return value

    # -- loading and saving -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained: str | os.PathLike, **kwargs: Any) -> XLMRobertaTokenizer:
        """Load from a directory holding ``sentencepiece.bpe.model`` (a checkpoint directory), or from the path of
        the ``.model`` file itself. ``tokenizer_config.json`` settings are read when present; ``kwargs`` win."""
        vocab, d = locate_vocab(pretrained)
        config = read_settings(d, {attr: getattr(cls, attr) for attr in SPECIAL_TOKEN_ATTRS})
        config.update(kwargs)
        return cls(vocab, **config)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> tuple:
        """Write ``sentencepiece.bpe.model``, ``tokenizer_config.json`` and ``special_tokens_map.json`` (the files
        transformers writes, so ``transformers.XLMRobertaTokenizer.from_pretrained`` reads them too). These are
        the legacy (slow) files, so ``legacy_format=False``, a ``filename_prefix`` and ``push_to_hub`` are refused."""
        bad = dict(kwargs)
        if legacy_format is False:
            bad["legacy_format"] = legacy_format
        if filename_prefix is not None:
            bad["filename_prefix"] = filename_prefix
        if push_to_hub:
            bad["push_to_hub"] = push_to_hub
        refuse_unknown(
            "XLMRobertaTokenizer.save_pretrained",
            bad,
            "it writes the sentencepiece files under their usual names, to a local directory; upload with "
            "huggingface_hub, or save with transformers' fast tokenizer for tokenizer.json",
        )
        config = {
            "added_tokens_decoder": {
                str(i): added_token(t, t in self._lstrip)
                for t, i in sorted(self.fairseq_tokens_to_ids.items(), key=lambda kv: kv[1])
            },
            "bos_token": self.bos_token,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "cls_token": self.cls_token,
            "eos_token": self.eos_token,
            "extra_special_tokens": {},
            "mask_token": self.mask_token,
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "padding_side": self.padding_side,
            "sep_token": self.sep_token,
            "sp_model_kwargs": {},
            "tokenizer_class": "XLMRobertaTokenizer",
            "truncation_side": self.truncation_side,
            "unk_token": self.unk_token,
        }
        smap = {
            "bos_token": self.bos_token,
            "cls_token": self.cls_token,
            "eos_token": self.eos_token,
            "mask_token": {k: v for k, v in added_token(self.mask_token, True).items() if k != "special"},
            "pad_token": self.pad_token,
            "sep_token": self.sep_token,
            "unk_token": self.unk_token,
        }
        return write_files(save_directory, self.vocab_file, config, smap)

    # -- vocabulary ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.sp_size + self.fairseq_offset + 1

    @property
    def vocab_size(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return (
            f"XLMRobertaTokenizer(vocab_file={self.vocab_file!r}, vocab_size={len(self)}, "
            f"model_max_length={self.model_max_length})"
        )

    @property
    def bos_token_id(self) -> int:
        return 0

    @property
    def cls_token_id(self) -> int:
        return 0

    @property
    def pad_token_id(self) -> int:
        return 1

    @property
    def eos_token_id(self) -> int:
        return 2

    @property
    def sep_token_id(self) -> int:
        return 2

    @property
    def unk_token_id(self) -> int:
        return 3

    @property
    def mask_token_id(self) -> int:
        return self.fairseq_tokens_to_ids["<mask>"]

    @property
    def pad_token_type_id(self) -> int:
        return 0

    @property
    def all_special_tokens(self) -> list[str]:
        return ["<s>", "</s>", "<unk>", "<pad>", "<mask>"]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "sep_token": self.sep_token,
            "pad_token": self.pad_token,
            "cls_token": self.cls_token,
            "mask_token": self.mask_token,
        }

    def get_vocab(self) -> dict[str, int]:
        return {self._id_to_token(i): i for i in range(len(self))}

    def _id_to_token(self, index: int) -> str:
        tok = self.fairseq_ids_to_tokens.get(index)
        if tok is not None:
            return tok
        if not 0 <= index - self.fairseq_offset < self.sp_size:
            raise IndexError(
                f"token id {index} is out of range for this tokenizer (0..{len(self) - 1}); a model "
                f"vocabulary padded past len(tokenizer) has rows no token maps to"
            )
        return self.sp_model.IdToPiece(index - self.fairseq_offset)

    def _token_to_id(self, token: str) -> int:
        tid = self.fairseq_tokens_to_ids.get(token)
        if tid is not None:
            return tid
        sp_id = self.sp_model.PieceToId(token)
        return sp_id + self.fairseq_offset if sp_id else self.unk_token_id

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        ids = to_py(ids)
        if isinstance(ids, int):
            return self._id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in special]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return "".join(tokens).replace(SPIECE_UNDERLINE, " ").strip()

    # -- text -> tokens -----------------------------------------------------------------------------------------
    def _split_special(self, text: str) -> list[str]:
        """Split ``text`` around special tokens, applying ``<mask>``'s lstrip to the chunk on its left."""
        parts = [p for p in self._special_re.split(text) if p]
        for i, part in enumerate(parts):
            if part in self._lstrip and i > 0 and parts[i - 1] not in self.fairseq_tokens_to_ids:
                parts[i - 1] = parts[i - 1].rstrip()
        return parts

    def tokenize(
        self,
        text: str,
        pair: str | None = None,
        add_special_tokens: bool = False,
        *,
        split_special_tokens: bool | None = None,
        is_split_into_words: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """The pieces of ``text`` (special tokens written in the text stay whole unless ``split_special_tokens``);
        with ``pair`` and ``add_special_tokens=True`` the pieces of the model input, as the fast tokenizer gives.
        ``is_split_into_words`` changes nothing here (one text is one word), as in transformers."""
        refuse_unknown("XLMRobertaTokenizer.tokenize", kwargs)
        check_text(text, "text")
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        if pair is not None or add_special_tokens:  # the fast tokenizer's tokenize(text, pair, add_special_tokens)
            first = self.tokenize(text, split_special_tokens=split_special_tokens)
            second = None if pair is None else self.tokenize(pair, split_special_tokens=split_special_tokens)
            if not add_special_tokens:
                return first + (second or [])
            out = [self.cls_token] + first + [self.sep_token]
            return out + ([self.sep_token] + second + [self.sep_token] if second is not None else [])
        out: list[str] = []
        for part in [text] if split_special_tokens else self._split_special(text):
            if not part:
                continue
            if part in self.fairseq_tokens_to_ids and not split_special_tokens:
                out.append(part)
            else:
                out.extend(self.sp_model.encode(part, out_type=str))
        return out

    def _encode_text(self, text: str, split_special_tokens: bool = False) -> list[int]:
        check_text(text, "text")
        ids: list[int] = []
        for part in [text] if split_special_tokens else self._split_special(text):
            if not part:
                continue
            tid = None if split_special_tokens else self.fairseq_tokens_to_ids.get(part)
            if tid is not None:
                ids.append(tid)
            else:
                # SP id 0 is <unk> -> fairseq 3; every other id shifts by the fairseq offset
                ids.extend(i + self.fairseq_offset if i else self.unk_token_id for i in self.sp_model.encode(part))
        return ids

    def _encode_offsets(self, text: str, split_special_tokens: bool = False) -> tuple[list[int], list]:
        """Ids of ``text`` and each token's ``(start, end)`` character offsets, as transformers' fast tokenizer
        gives them (a special token written in the text spans the whitespace its ``lstrip`` took)."""
        check_text(text, "text")
        ids: list[int] = []
        offs: list[tuple[int, int]] = []
        pos = 0
        parts = [text] if split_special_tokens else self._special_re.split(text)
        for i, part in enumerate(parts):
            special = i % 2 == 1 and not split_special_tokens
            if special:
                start = pos
                if part in self._lstrip:  # the whitespace before it belongs to it (Unicode White_Space, as fast)
                    start -= len(parts[i - 1]) - len(parts[i - 1].rstrip(WHITE_SPACE))
                ids.append(self.fairseq_tokens_to_ids[part])
                offs.append((start, pos + len(part)))
            elif part:
                chunk = part
                if i + 1 < len(parts) and parts[i + 1] in self._lstrip and not split_special_tokens:
                    chunk = part.rstrip(WHITE_SPACE)
                if self._normalizer is None:
                    self._normalizer = Normalizer(self.vocab_file)
                for sp_id, (s, e) in piece_offsets(self._normalizer, self.sp_model, chunk, f"text {text!r:.60}"):
                    ids.append(sp_id + self.fairseq_offset if sp_id else self.unk_token_id)
                    offs.append((pos + s, pos + e))
            pos += len(part)
        return ids, offs

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``<s> A </s>`` or ``<s> A </s></s> B </s>``."""
        if token_ids_1 is None:
            return [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id]
        sep = [self.sep_token_id]
        return [self.cls_token_id] + list(token_ids_0) + sep + sep + list(token_ids_1) + sep

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        """1 where ``build_inputs_with_special_tokens`` puts a special token; with ``already_has_special_tokens``,
        1 at every special id of ``token_ids_0`` (transformers' rule)."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "already_has_special_tokens=True takes one sequence that already holds its special tokens; "
                    "pass token_ids_1=None"
                )
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1, 1] + [0] * len(token_ids_1) + [1]

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """All zeros, one per token of the model input (XLM-R does not use token types)."""
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    @staticmethod
    def num_special_tokens_to_add(pair: bool = False) -> int:
        return 4 if pair else 2
