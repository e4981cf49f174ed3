"""The tokenizer's files: reading and checking ``sentencepiece.bpe.model``, ``tokenizer_config.json`` and
``special_tokens_map.json`` (every failure names the file and the fix), and writing them as transformers does."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import sentencepiece as spm

from .checks import check_int

logger = logging.getLogger("xlmrxl")

VOCAB_FILE = "sentencepiece.bpe.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
SPECIAL_TOKEN_ATTRS = ("bos_token", "eos_token", "sep_token", "cls_token", "unk_token", "pad_token", "mask_token")

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def lfs_hint(path: Path) -> str:
    """The error for a git-LFS pointer saved in place of ``path``'s real content, with how to fetch it."""
    return (
        f"{str(path)!r} is a git-LFS pointer (a small text file naming the real file), not the file itself: fetch "
        "the real file with `git lfs install && git lfs pull` in the checkout it came from, or download the "
        "checkout again (e.g. `huggingface-cli download <repo>`)"
    )


def load_sentencepiece(path: Path) -> spm.SentencePieceProcessor:
    """A ``SentencePieceProcessor`` loaded from ``path``, or a ValueError saying what the file is instead (empty,
    a git-LFS pointer, an HTML page, something else) and how to get the real one."""
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
        raise ValueError(lfs_hint(path))
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


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a ValueError naming the file and what is wrong when it is not one."""
    data = path.read_bytes()
    if data.startswith(_LFS_POINTER):
        raise ValueError(lfs_hint(path))
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


def check_settings(config: dict[str, Any], where: Path) -> None:
    """Validate the settings read from ``tokenizer_config.json`` so a bad one names the file."""
    if "model_max_length" in config:
        check_int("model_max_length", config["model_max_length"], 1, str(where))
    for key in ("padding_side", "truncation_side"):
        if key in config and config[key] not in ("left", "right"):
            raise ValueError(f"{key}={config[key]!r} in {str(where)!r} is not valid; use 'left' or 'right'")
    if "clean_up_tokenization_spaces" in config and not isinstance(config["clean_up_tokenization_spaces"], bool):
        raise TypeError(
            f"clean_up_tokenization_spaces={config['clean_up_tokenization_spaces']!r} in {str(where)!r} must be "
            "true or false"
        )


def locate_vocab(pretrained: str | os.PathLike) -> tuple[Path, Path]:
    """``(model file, directory of the settings files)`` for a checkpoint directory or a ``.model`` file path."""
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
    return vocab, d


def read_settings(d: Path, specials: dict[str, str]) -> dict[str, Any]:
    """The tokenizer settings of ``d/tokenizer_config.json`` (checked), warning about special tokens in it or in
    ``special_tokens_map.json`` that differ from ``specials`` (XLM-R's mapping is fixed)."""
    config: dict[str, Any] = {}
    cfg_path = d / TOKENIZER_CONFIG_FILE
    if cfg_path.is_file():
        raw = read_json_object(cfg_path)
        for key in ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces"):
            if raw.get(key) is not None:
                config[key] = raw[key]
        check_settings(config, cfg_path)
        check_special_tokens(raw, cfg_path, specials)
    smap = d / SPECIAL_TOKENS_MAP_FILE
    if smap.is_file():
        check_special_tokens(read_json_object(smap), smap, specials)
    return config


def check_special_tokens(raw: dict[str, Any], where: Path, specials: dict[str, str]) -> None:
    """Warn for every special token ``raw`` sets to something other than ``specials`` says (it is ignored)."""
    for attr in SPECIAL_TOKEN_ATTRS:
        val = raw.get(attr)
        if isinstance(val, dict):
            val = val.get("content")
        if val is not None and val != specials[attr]:
            logger.warning(
                "xlmrxl: %s sets %s=%r but XLM-RoBERTa's fixed fairseq mapping uses %r; ignoring it",
                where,
                attr,
                val,
                specials[attr],
            )


def added_token(content: str, lstrip: bool = False) -> dict[str, Any]:
    """A special token's entry in ``tokenizer_config.json``'s ``added_tokens_decoder``, as transformers writes it."""
    return {
        "content": content,
        "lstrip": lstrip,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def write_files(
    save_directory: str | os.PathLike, vocab_file: str, config: dict[str, Any], smap: dict[str, Any]
) -> tuple[str, str, str]:
    """Write the model file (copied from ``vocab_file``) and the two JSON files into ``save_directory``; returns
    their paths as transformers' ``save_pretrained`` does (config, special tokens map, model)."""
    d = Path(save_directory)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"save_pretrained needs a directory, but {str(d)!r} is a file")
    d.mkdir(parents=True, exist_ok=True)
    vocab_out = d / VOCAB_FILE
    if Path(vocab_file).resolve() != vocab_out.resolve():
        shutil.copyfile(vocab_file, vocab_out)
    with open(d / TOKENIZER_CONFIG_FILE, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, ensure_ascii=False, sort_keys=True)
        fh.write("\n")
    with open(d / SPECIAL_TOKENS_MAP_FILE, "w", encoding="utf-8") as fh:
        json.dump(smap, fh, indent=2, ensure_ascii=False, sort_keys=True)
        fh.write("\n")
    return (str(d / TOKENIZER_CONFIG_FILE), str(d / SPECIAL_TOKENS_MAP_FILE), str(vocab_out))
