"""Helpers of the client tests (COMET, sentence-transformers), which run in their own environments
(`make test-clients`: .venv-clients with unbabel-comet 2.2.7 + transformers 4.56.2, .venv-st5 with the newest
transformers 5.x). In the main environment, where those packages are absent, every test here skips.

The test modules define their fixtures with these (no conftest.py here: a second ``conftest`` module would shadow
tests/conftest.py for the main suite's ``from conftest import ...``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks.clients_models: the offline builders

from benchmarks.clients_models import encoder_dir  # noqa: E402


def tiny_xl_dir(tmp_path_factory) -> Path:
    """A tiny random-weight XLM-RoBERTa-XL checkpoint directory with a SentencePiece tokenizer."""
    return encoder_dir(tmp_path_factory.mktemp("xl-tiny"))


def xlmrxl_records(monkeypatch, caplog):
    """The ``xlmrxl`` log records of this test (INFO and up), with once-per-process reasons logged afresh."""
    from xlmrxl_kernels import logs

    monkeypatch.setattr(logs, "_LOGGED", set())
    caplog.set_level(logging.INFO, logger="xlmrxl")
    caplog.set_level(logging.INFO, logger="xlmrxl_kernels")
    return lambda: [r for r in caplog.records if r.name in ("xlmrxl", "xlmrxl_kernels")]
