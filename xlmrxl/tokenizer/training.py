"""Training the small deterministic unigram SentencePiece model the tests and the demo use, from the multilingual
corpus shipped in ``xlmrxl/data/corpus.txt``."""

from __future__ import annotations

import collections
import logging
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from .files import VOCAB_FILE

logger = logging.getLogger("xlmrxl")

CORPUS_PATH = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"


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
