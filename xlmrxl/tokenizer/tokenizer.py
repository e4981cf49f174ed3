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
Everything else matches both: multilingual text, tabs, runs of spaces, leading/trailing spaces, NBSP, zero-width
spaces, full-width forms, special tokens in text, pairs, padding, batches.

``train_sentencepiece`` trains the small deterministic unigram model the tests and the demo use, from the
multilingual corpus shipped in ``xlmrxl/data/corpus.txt``.
"""

from __future__ import annotations

import collections
import json
import logging
import operator
import os
import re
import shutil
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("xlmrxl")

VOCAB_FILE = "sentencepiece.bpe.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CORPUS_PATH = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"

SPIECE_UNDERLINE = "\u2581"
VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
LARGE_INTEGER = int(1e20)  # above this, model_max_length counts as "not set"

_PADDING = ("longest", "max_length", "do_not_pad")
_TRUNCATION = ("longest_first", "only_first", "only_second", "do_not_truncate")


# ----------------------------------------------------------------------------------------------------------------
# Training a small SentencePiece model (tests, demo)
# ----------------------------------------------------------------------------------------------------------------
def _fit_characters(lines: list[str], vocab_size: int):
    """Pick ``character_coverage`` (SentencePiece accepts 0.98..1 for unigram): XLM-R's 0.9995 when the characters
    it needs fit in ~85% of the vocabulary, else lower, down to 0.98. When even 0.98 needs more characters than that
    (a tiny vocabulary over many scripts), keep only the lines written entirely in the most frequent characters."""
    counts = collections.Counter(ch for line in lines for ch in unicodedata.normalize("NFKC", line) if not ch.isspace())
    total = sum(counts.values())
    budget = max(1, int(0.85 * (vocab_size - 3)))
    top = counts.most_common(budget)
    covered = sum(n for _, n in top) / total
    if covered >= 0.98:
        return lines, min(0.9995, covered)
    keep = {ch for ch, _ in top}
    kept = [ln for ln in lines if all(ch in keep or ch.isspace() for ch in unicodedata.normalize("NFKC", ln))]
    logger.info(
        "xlmrxl: vocab_size=%d is small for this corpus; training on the %d of %d lines written in its %d "
        "most frequent characters",
        vocab_size,
        len(kept),
        len(lines),
        budget,
    )
    if not kept:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for this corpus ({len(counts)} distinct "
            "characters); use a larger vocab_size"
        )
    return kept, 0.98


def train_sentencepiece(
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    corpus: None | str | os.PathLike | Iterable[str] = None,
    seed: int = 0,
) -> Path:
    """Train a unigram SentencePiece model deterministically and write ``out_dir/sentencepiece.bpe.model``.

    ``corpus`` is a text file (one sentence a line), an iterable of sentences, or None for the shipped multilingual
    corpus. Settings mirror XLM-R's model: unigram, ``nmt_nfkc`` normalisation, dummy prefix, extra whitespace
    removed, no byte fallback, SP ids ``<unk>``=0 ``<s>``=1 ``</s>``=2 (no ``<pad>`` piece). Training runs single
    threaded with input shuffling off and the SentencePiece random seed fixed, so the file is the same every run.
    Returns the path of the model file.
    """
    import sentencepiece as spm

    if int(vocab_size) < 8:
        raise ValueError(f"vocab_size={vocab_size} is too small; use at least 8 (the tests use 1000)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = CORPUS_PATH
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(
                f"corpus file {str(path)!r} does not exist; pass a text file, a list of "
                "sentences, or None for the shipped corpus"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = [str(s) for s in corpus]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise ValueError("the corpus is empty; SentencePiece needs at least a few sentences to train on")

    lines, coverage = _fit_characters(lines, int(vocab_size))
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(int(seed))
    model_path = out / VOCAB_FILE
    with open(model_path, "wb") as fh:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=fh,
            model_type="unigram",
            vocab_size=int(vocab_size),
            character_coverage=coverage,
            normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=True,
            remove_extra_whitespaces=True,
            byte_fallback=False,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            shuffle_input_sentence=False,
            input_sentence_size=0,
            minloglevel=2,
        )
    logger.info("xlmrxl: trained a %d-piece unigram SentencePiece model at %s", vocab_size, model_path)
    return model_path


# ----------------------------------------------------------------------------------------------------------------
# Checked reading of the tokenizer's files and arguments: every failure names the file or argument and the fix
# ----------------------------------------------------------------------------------------------------------------
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def _lfs_hint(path: Path) -> str:
    return (
        f"{str(path)!r} is a git-LFS pointer (a small text file naming the real file), not the file itself: fetch "
        "the real file with `git lfs install && git lfs pull` in the checkout it came from, or download the "
        "checkout again (e.g. `huggingface-cli download <repo>`)"
    )


def _load_sentencepiece(path: Path):
    """A ``SentencePieceProcessor`` loaded from ``path``, or a ValueError saying what the file is instead (empty,
    a git-LFS pointer, an HTML page, something else) and how to get the real one."""
    import sentencepiece as spm

    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist (or is not a regular file)"
        raise FileNotFoundError(f"SentencePiece model {str(path)!r} {what}")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        raise ValueError(
            f"SentencePiece model {str(path)!r} is empty (0 bytes): a download or copy was cut short; "
            f"fetch {path.name} again"
        )
    if head.startswith(_LFS_POINTER):
        raise ValueError(_lfs_hint(path))
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (RuntimeError, OSError) as exc:
        looks = " (it looks like an HTML page: a login or error page saved in its place)" if b"<" in head[:64] else ""
        raise ValueError(
            f"{str(path)!r} is not a SentencePiece model{looks}: sentencepiece could not parse it ({exc}); "
            f"fetch {VOCAB_FILE} of the checkout again"
        ) from None
    if sp.GetPieceSize() < 3:
        raise ValueError(f"SentencePiece model {str(path)!r} has only {sp.GetPieceSize()} pieces; it is not XLM-R's")
    return sp


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a ValueError naming the file and what is wrong when it is not one."""
    data = path.read_bytes()
    if data.startswith(_LFS_POINTER):
        raise ValueError(_lfs_hint(path))
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (byte {exc.start}); it should be a JSON object") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; fix the file or "
            "delete it (it only holds optional settings)"
        ) from None
    if not isinstance(raw, dict):
        kind = "null" if raw is None else _JSON_TYPES.get(type(raw), type(raw).__name__)
        kind = "a boolean" if isinstance(raw, bool) else kind
        raise ValueError(f"{str(path)!r} must hold a JSON object ({{...}}) of settings, but holds {kind}")
    return raw


def _check_int(name: str, value: Any, low: int, where: str = "") -> int:
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


def _check_settings(config: dict[str, Any], where: Path) -> None:
    """Validate the settings read from ``tokenizer_config.json`` so a bad one names the file."""
    if "model_max_length" in config:
        _check_int("model_max_length", config["model_max_length"], 1, str(where))
    for key in ("padding_side", "truncation_side"):
        if key in config and config[key] not in ("left", "right"):
            raise ValueError(f"{key}={config[key]!r} in {str(where)!r} is not valid; use 'left' or 'right'")
    if "clean_up_tokenization_spaces" in config and not isinstance(config["clean_up_tokenization_spaces"], bool):
        raise TypeError(
            f"clean_up_tokenization_spaces={config['clean_up_tokenization_spaces']!r} in {str(where)!r} must be "
            "true or false"
        )


def _check_text(text: Any, where: str) -> str:
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


# ----------------------------------------------------------------------------------------------------------------
# BatchEncoding
# ----------------------------------------------------------------------------------------------------------------
class BatchEncoding(dict):
    """The tokenizer's output: a dict (``enc["input_ids"]``) that also offers attribute access
    (``enc.input_ids``), ``.to(device)`` for tensors, and ``model(**enc)``."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {', '.join(self.keys())}") from None

    def to(self, device) -> BatchEncoding:
        """Move every tensor to ``device`` (in place; returns self, like transformers)."""
        for k, v in self.items():
            if hasattr(v, "to"):
                self[k] = v.to(device)
        return self

    def __getstate__(self):
        return dict(self)

    def __setstate__(self, state):
        self.update(state)


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------------------
class XLMRobertaTokenizer:
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
        **kwargs: Any,
    ):
        path = Path(vocab_file)
        self.vocab_file = str(path)
        self.sp_model = _load_sentencepiece(path)
        self.sp_size = int(self.sp_model.GetPieceSize())
        self.model_max_length = (
            _check_int("model_max_length", model_max_length, 1) if model_max_length is not None else VERY_LARGE_INTEGER
        )
        self.padding_side = self._check_side("padding_side", padding_side)
        self.truncation_side = self._check_side("truncation_side", truncation_side)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.init_kwargs = dict(kwargs)

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
        p = Path(pretrained)
        if p.is_file():
            vocab, d = p, p.parent
        elif p.is_dir():
            d = p
            vocab = p / VOCAB_FILE
            if not vocab.is_file():
                found = sorted(x.name for x in p.glob("*.model"))
                hint = f" (found {', '.join(found)})" if found else ""
                raise FileNotFoundError(
                    f"{str(p)!r} has no {VOCAB_FILE}{hint}; point from_pretrained at a directory holding the "
                    "SentencePiece model of an XLM-RoBERTa checkpoint"
                )
        else:
            raise FileNotFoundError(
                f"{str(p)!r} is neither a directory nor a file; xlmrxl loads tokenizers from local paths only "
                "(download the checkpoint first, e.g. with `huggingface-cli download facebook/xlm-roberta-xl`)"
            )
        config: dict[str, Any] = {}
        cfg_path = d / TOKENIZER_CONFIG_FILE
        if cfg_path.is_file():
            raw = _read_json_object(cfg_path)
            for key in ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces"):
                if raw.get(key) is not None:
                    config[key] = raw[key]
            _check_settings(config, cfg_path)
            cls._check_special_tokens(raw, cfg_path)
        smap = d / SPECIAL_TOKENS_MAP_FILE
        if smap.is_file():
            cls._check_special_tokens(_read_json_object(smap), smap)
        config.update(kwargs)
        return cls(vocab, **config)

    @classmethod
    def _check_special_tokens(cls, raw: dict[str, Any], where: Path) -> None:
        for attr in ("bos_token", "eos_token", "sep_token", "cls_token", "unk_token", "pad_token", "mask_token"):
            val = raw.get(attr)
            if isinstance(val, dict):
                val = val.get("content")
            if val is not None and val != getattr(cls, attr):
                logger.warning(
                    "xlmrxl: %s sets %s=%r but XLM-RoBERTa's fixed fairseq mapping uses %r; ignoring it",
                    where,
                    attr,
                    val,
                    getattr(cls, attr),
                )

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple:
        """Write ``sentencepiece.bpe.model``, ``tokenizer_config.json`` and ``special_tokens_map.json`` (the files
        transformers writes, so ``transformers.XLMRobertaTokenizer.from_pretrained`` reads them too)."""
        d = Path(save_directory)
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"save_pretrained needs a directory, but {str(d)!r} is a file")
        d.mkdir(parents=True, exist_ok=True)
        vocab_out = d / VOCAB_FILE
        if Path(self.vocab_file).resolve() != vocab_out.resolve():
            shutil.copyfile(self.vocab_file, vocab_out)

        def added(content: str, lstrip: bool = False) -> dict[str, Any]:
            return {
                "content": content,
                "lstrip": lstrip,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }

        config = {
            "added_tokens_decoder": {
                str(i): added(t, t in self._lstrip)
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
            "mask_token": {k: v for k, v in added(self.mask_token, True).items() if k != "special"},
            "pad_token": self.pad_token,
            "sep_token": self.sep_token,
            "unk_token": self.unk_token,
        }
        with open(d / TOKENIZER_CONFIG_FILE, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2, ensure_ascii=False, sort_keys=True)
            fh.write("\n")
        with open(d / SPECIAL_TOKENS_MAP_FILE, "w", encoding="utf-8") as fh:
            json.dump(smap, fh, indent=2, ensure_ascii=False, sort_keys=True)
            fh.write("\n")
        return (str(d / TOKENIZER_CONFIG_FILE), str(d / SPECIAL_TOKENS_MAP_FILE), str(vocab_out))

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
        ids = _to_py(ids)
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

    def tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """The pieces of ``text`` (special tokens written in the text stay whole), without ``<s>``/``</s>``."""
        if kwargs:
            logger.warning("xlmrxl: tokenize() ignores keyword arguments %s", sorted(kwargs))
        _check_text(text, "text")
        out: list[str] = []
        for part in self._split_special(text):
            if not part:
                continue
            if part in self.fairseq_tokens_to_ids:
                out.append(part)
            else:
                out.extend(self.sp_model.encode(part, out_type=str))
        return out

    def _encode_text(self, text: str) -> list[int]:
        _check_text(text, "text")
        ids: list[int] = []
        for part in self._split_special(text):
            if not part:
                continue
            tid = self.fairseq_tokens_to_ids.get(part)
            if tid is not None:
                ids.append(tid)
            else:
                # SP id 0 is <unk> -> fairseq 3; every other id shifts by the fairseq offset
                ids.extend(i + self.fairseq_offset if i else self.unk_token_id for i in self.sp_model.encode(part))
        return ids

    def build_inputs_with_special_tokens(self, ids: list[int], pair_ids: list[int] | None = None) -> list[int]:
        if pair_ids is None:
            return [self.cls_token_id] + list(ids) + [self.sep_token_id]
        return [self.cls_token_id] + list(ids) + [self.sep_token_id] * 2 + list(pair_ids) + [self.sep_token_id]

    def get_special_tokens_mask(self, ids: list[int], pair_ids: list[int] | None = None) -> list[int]:
        if pair_ids is None:
            return [1] + [0] * len(ids) + [1]
        return [1] + [0] * len(ids) + [1, 1] + [0] * len(pair_ids) + [1]

    @staticmethod
    def num_special_tokens_to_add(pair: bool = False) -> int:
        return 4 if pair else 2

    # -- strategies (transformers' rules) -----------------------------------------------------------------------
    def _strategies(self, padding, truncation, max_length, pad_to_multiple_of):
        if pad_to_multiple_of is not None:
            pad_to_multiple_of = _check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # transformers' default when only max_length is given
        if padding is True:
            pad = "longest"
        elif padding is False or padding is None:
            pad = "do_not_pad"
        elif isinstance(padding, str) and padding in _PADDING:
            pad = padding
        else:
            raise ValueError(f"padding={padding!r} is not valid; use False, True, 'longest' or 'max_length'")
        if truncation is True:
            trunc = "longest_first"
        elif truncation is False or truncation is None:
            trunc = "do_not_truncate"
        elif isinstance(truncation, str) and truncation in _TRUNCATION:
            trunc = truncation
        else:
            raise ValueError(
                f"truncation={truncation!r} is not valid; use False, True, 'longest_first', "
                "'only_first' or 'only_second'"
            )
        if max_length is None:
            if pad == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    logger.warning(
                        "xlmrxl: padding='max_length' without max_length, and the tokenizer has no "
                        "model_max_length: not padding. Pass max_length=N to pad."
                    )
                    pad = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if trunc != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    logger.warning(
                        "xlmrxl: truncation without max_length, and the tokenizer has no "
                        "model_max_length: not truncating. Pass max_length=N to truncate."
                    )
                    trunc = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        else:
            max_length = _check_int("max_length", max_length, 0)
        if (
            trunc != "do_not_truncate"
            and pad != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"truncation length max_length={max_length} is not a multiple of "
                f"pad_to_multiple_of={pad_to_multiple_of}; make one a multiple of the other"
            )
        return pad, trunc, max_length

    def _truncate(self, ids: list[int], pair_ids: list[int] | None, n: int, strategy: str, name: str = "the input"):
        # A side too short to lose n tokens: logged and left whole, as the slow tokenizer does (fast raises). A side
        # of exactly n tokens is emptied (fast's result; slow refuses it, an off-by-one that would leave the input
        # longer than max_length).
        if n <= 0:
            return ids, pair_ids
        right = self.truncation_side == "right"
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

    def _prepare(self, ids, pair_ids, add_special_tokens, trunc, max_length, want_tt, want_special, name="the input"):
        total = len(ids) + (len(pair_ids) if pair_ids is not None else 0)
        if add_special_tokens:
            total += self.num_special_tokens_to_add(pair_ids is not None)
        if trunc != "do_not_truncate" and max_length is not None and total > max_length:
            ids, pair_ids = self._truncate(ids, pair_ids, total - max_length, trunc, name)
        if add_special_tokens:
            seq = self.build_inputs_with_special_tokens(ids, pair_ids)
            special = self.get_special_tokens_mask(ids, pair_ids)
        else:
            seq = ids + (pair_ids or [])
            special = [0] * len(seq)
        out = {"input_ids": seq}
        if want_tt:
            out["token_type_ids"] = [0] * len(seq)
        if want_special:
            out["special_tokens_mask"] = special
        if max_length is None and len(seq) > self.model_max_length:
            logger.warning(
                "xlmrxl: sequence of %d tokens is longer than model_max_length=%d; the model will fail "
                "on it. Pass truncation=True.",
                len(seq),
                self.model_max_length,
            )
        return out

    def _pad(self, enc: dict[str, list[int]], length: int, want_mask: bool) -> dict[str, list[int]]:
        n = len(enc["input_ids"])
        gap = length - n
        fills = {"input_ids": self.pad_token_id, "token_type_ids": self.pad_token_type_id, "special_tokens_mask": 1}
        out = {}
        if want_mask:
            enc = dict(enc, attention_mask=[1] * n)
            fills["attention_mask"] = 0
        for k, v in enc.items():
            if gap > 0:
                pad = [fills[k]] * gap
                v = v + pad if self.padding_side == "right" else pad + v
            out[k] = v
        return out

    # -- the main entry -----------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: None | str | Sequence[str] = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: None | bool | str = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = True,
        return_token_type_ids: bool | None = False,
        return_special_tokens_mask: bool = False,
        return_length: bool = False,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encode one text, a pair, or a batch (list) of texts / pairs; see the module docstring for the rules."""
        if kwargs.pop("is_split_into_words", False):
            raise NotImplementedError("is_split_into_words=True is not supported; pass plain strings")
        if kwargs:
            logger.warning("xlmrxl: the tokenizer ignores keyword arguments %s", sorted(kwargs))
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use None (lists) or 'pt'")
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
            _check_text(t, name)
            if paired or (batched and text_pair is not None):
                _check_text(p, pname)
        pad, trunc, max_length = self._strategies(padding, truncation, max_length, pad_to_multiple_of)
        if trunc != "do_not_truncate" and max_length is not None and texts:
            need = self.num_special_tokens_to_add(paired) if add_special_tokens else 0
            if max_length < max(need, 1):
                raise ValueError(
                    f"truncation to max_length={max_length} is impossible: "
                    + (f"{'a pair' if paired else 'a text'} takes {need} special tokens" if need else "")
                    + (" alone; " if need else "no tokens would be left; ")
                    + f"pass max_length >= {max(need, 1)} (XLM-R models take up to 512), or truncation=False"
                )
        if trunc == "only_second" and any(p is None for p in pairs):
            # transformers silently keeps such inputs whole; say so once
            logger.warning("xlmrxl: truncation='only_second' does not truncate inputs that have no text_pair")
        want_mask = bool(return_attention_mask) if return_attention_mask is not None else True
        want_tt = bool(return_token_type_ids)

        encs = [
            self._prepare(
                self._encode_text(t),
                self._encode_text(p) if p is not None else None,
                add_special_tokens,
                trunc,
                max_length,
                want_tt,
                return_special_tokens_mask,
                names[i] if batched else "the input",
            )
            for i, (t, p) in enumerate(zip(texts, pairs))
        ]
        if pad == "longest":
            target = max(len(e["input_ids"]) for e in encs) if encs else 0
        elif pad == "max_length":
            target = int(max_length)
        else:
            target = None
        if target is not None and pad_to_multiple_of and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
        padded = []
        for e in encs:
            n = len(e["input_ids"])
            if target is not None:
                e = self._pad(e, target, want_mask)
            elif want_mask:
                e = dict(e, attention_mask=[1] * n)
            if return_length:  # as the slow tokenizer: a batch reports unpadded lengths, a single input its padded one
                e["length"] = n if batched else len(e["input_ids"])
            padded.append(e)
        keys = list(padded[0].keys()) if padded else ["input_ids"] + (["attention_mask"] if want_mask else [])
        if return_tensors == "pt":
            import torch

            lengths = {len(e["input_ids"]) for e in padded}
            if len(lengths) > 1:
                raise ValueError(
                    f"cannot make one tensor from sequences of lengths {sorted(lengths)}; pass "
                    "padding=True (and truncation=True for overlong inputs) with return_tensors='pt'"
                )
            data = {k: torch.tensor([e[k] for e in padded], dtype=torch.long) for k in keys}
        elif batched:
            data = {k: [e[k] for e in padded] for k in keys}
        else:
            data = dict(padded[0])
        return BatchEncoding(data)

    def encode(
        self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs: Any
    ) -> list[int]:
        """Ids of one text (or pair), as a list (or a (1, L) tensor with ``return_tensors='pt'``)."""
        if isinstance(text, (list, tuple)):
            raise TypeError("encode() takes one text; call the tokenizer itself on a list of texts")
        kwargs.pop("return_attention_mask", None)
        return self(text, text_pair, add_special_tokens=add_special_tokens, return_attention_mask=False, **kwargs)[
            "input_ids"
        ]

    # -- ids -> text --------------------------------------------------------------------------------------------
    def decode(
        self,
        token_ids,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """Text of ``token_ids`` (int, list or tensor): pieces joined, ``▁`` -> space, ends stripped."""
        ids = _to_py(token_ids)
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
        sequences,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        seqs = _to_py(sequences)
        return [
            self.decode(
                s, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=clean_up_tokenization_spaces
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


def _to_py(x):
    """Tensors / numpy arrays / nested lists -> python ints and lists."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [_to_py(v) for v in x]
    return int(x)
