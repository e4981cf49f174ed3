"""Fixtures of the client tests (COMET, sentence-transformers), which run in their own environments
(`make test-clients`: .venv-clients with unbabel-comet 2.2.7 + transformers 4.56.2, .venv-st5 with the newest
transformers 5.x). In the main environment, where those packages are absent, every test here skips.

- ``xl_dir``: a tiny random-weight XLM-RoBERTa-XL checkpoint directory with a SentencePiece tokenizer (session).
- ``comet_log``: the ``xlmrxl`` logger's records of one test, fallback reasons logged afresh.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks.clients_models: the offline builders


@pytest.fixture(scope="session")
def xl_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from benchmarks.clients_models import encoder_dir

    return encoder_dir(tmp_path_factory.mktemp("xl-tiny"))


@pytest.fixture
def xlmrxl_records(monkeypatch, caplog):
    """The ``xlmrxl`` log records of this test (INFO and up), with once-per-process reasons logged afresh."""
    import xlmrxl.backend

    monkeypatch.setattr(xlmrxl.backend, "_LOGGED", set())
    caplog.set_level(logging.INFO, logger="xlmrxl")
    return lambda: [r for r in caplog.records if r.name == "xlmrxl"]
