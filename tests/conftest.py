"""Shared test set-up.

- Without CUDA, Triton kernels run in the CPU interpreter: TRITON_INTERPRET=1 must be set before any kernel module
  is imported (Triton reads it when a kernel is decorated), so it is set here, first.
- XLMRXL_POISON=1 makes every kernel output start as NaN, so an element a kernel forgets to write fails the test.
- Markers: `gpu` tests are skipped without CUDA; `ext` tests are skipped without the compiled extension unless
  XLMRXL_REQUIRE_EXT=1 (CI), where its absence is a failure.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("XLMRXL_POISON", "1")

import pytest  # noqa: E402

from xlmrxl.tiny import tiny_config_kwargs  # noqa: E402, F401  (the shared tiny config; tests import it from here)
from xlmrxl_kernels._utils import env_flag  # noqa: E402  (imports neither Triton nor a kernel)

HAS_CUDA = torch.cuda.is_available()
INTERPRETING = env_flag("TRITON_INTERPRET")


REQUIRE_EXT = env_flag("XLMRXL_REQUIRE_EXT")


def _ext_missing_reason():
    try:
        from xlmrxl_kernels import cache_extension_available, cache_extension_unavailable_reason
    except ImportError as exc:  # XLMRXL_REQUIRE_EXT=1 and the extension is missing: let the tests fail loudly
        return None if REQUIRE_EXT else str(exc)
    return None if cache_extension_available() else cache_extension_unavailable_reason()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    ext_reason = _ext_missing_reason() if any("ext" in item.keywords for item in items) else None
    skip_ext = pytest.mark.skip(reason=f"compiled extension missing: {ext_reason}")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "ext" in item.keywords and ext_reason is not None and not REQUIRE_EXT:
            item.add_marker(skip_ext)


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _env_fresh():
    """Every test starts and ends with ``XLMRXL_*`` switches re-read (``xlmrxl_kernels.env`` caches them); a test
    that changes one mid-test calls ``env.refresh()`` itself."""
    from xlmrxl_kernels import env

    env.refresh()
    yield
    env.refresh()


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory):
    """A directory holding a tiny SentencePiece model (`sentencepiece.bpe.model`) trained on the shipped corpus."""
    from xlmrxl.tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("spm")
    train_sentencepiece(d, vocab_size=1000)
    return d


@pytest.fixture
def fresh_log(monkeypatch):
    """Fallback reasons are logged once per process; this test sees them logged afresh."""
    from xlmrxl_kernels import logs

    monkeypatch.setattr(logs, "_LOGGED", set())
