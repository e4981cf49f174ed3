"""xlmrxl.logging: load warnings reach stderr by default (as transformers' do), ``XLMRXL_VERBOSITY`` and
``set_verbosity`` control them, a console the application configured never prints a message twice, and every module
of xlmrxl and its kernels logs under the one ``"xlmrxl"`` name."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config_kwargs

import xlmrxl

ROOT = Path(__file__).resolve().parents[1]
LOAD = "import sys, xlmrxl; xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(sys.argv[1])"
WARNING_TEXT = "newly initialized"


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("log_mlm")
    xlmrxl.XLMRobertaXLForMaskedLM(xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs())).save_pretrained(d)
    return d


@pytest.fixture
def level():
    """Restore the library's level after a test that changes it."""
    logger = logging.getLogger("xlmrxl")
    old = logger.level
    yield
    logger.setLevel(old)


def _python(code: str, *args: str, **env: str) -> None:
    """Run ``code`` in a fresh interpreter whose stdout / stderr are this process's fds (capfd sees them)."""
    environ = {k: v for k, v in os.environ.items() if k != "XLMRXL_VERBOSITY"}
    environ.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **env)
    subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=environ, check=True, timeout=300)


def test_mlm_checkpoint_into_classifier_warns_on_stderr_by_default(mlm_dir, capfd):
    _python(LOAD, str(mlm_dir))
    err = capfd.readouterr().err
    assert WARNING_TEXT in err and "classifier" in err, err[-2000:]
    assert err.count(WARNING_TEXT) == 1


@pytest.mark.parametrize("value", ["error", "CRITICAL"])
def test_xlmrxl_verbosity_hides_warnings(mlm_dir, capfd, value):
    _python(LOAD, str(mlm_dir), XLMRXL_VERBOSITY=value)
    assert WARNING_TEXT not in capfd.readouterr().err


def test_xlmrxl_verbosity_info_and_bad_values(capfd):
    show = "import logging, xlmrxl; print(xlmrxl.logging.get_verbosity()); logging.getLogger('xlmrxl').info('i-msg')"
    _python(show, XLMRXL_VERBOSITY="info")
    out, err = capfd.readouterr()
    assert out.strip() == str(logging.INFO) and "i-msg" in err
    _python(show, XLMRXL_VERBOSITY="loud")  # never breaks the import: says what is allowed, keeps warning
    out, err = capfd.readouterr()
    assert out.strip() == str(logging.WARNING) and "i-msg" not in err
    assert "XLMRXL_VERBOSITY='loud'" in err and "debug, info, warning, error, critical" in err


def test_an_application_console_handler_never_prints_twice(capfd):
    _python("import logging, xlmrxl; logging.basicConfig(); logging.getLogger('xlmrxl').warning('w-msg')")
    err = capfd.readouterr().err
    assert err.count("w-msg") == 1, err


def test_set_verbosity_in_process(mlm_dir, capsys, level):
    xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(mlm_dir)
    assert WARNING_TEXT in capsys.readouterr().err  # the handler writes to the current sys.stderr
    xlmrxl.logging.set_verbosity_error()
    assert xlmrxl.logging.get_verbosity() == logging.ERROR
    xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(mlm_dir)
    assert WARNING_TEXT not in capsys.readouterr().err
    for value, want in (("info", logging.INFO), ("Debug", logging.DEBUG), ("warn", logging.WARNING), (40, 40)):
        xlmrxl.logging.set_verbosity(value)
        assert xlmrxl.logging.get_verbosity() == want
    for fn, want in (
        (xlmrxl.logging.set_verbosity_debug, logging.DEBUG),
        (xlmrxl.logging.set_verbosity_info, logging.INFO),
        (xlmrxl.logging.set_verbosity_warning, logging.WARNING),
    ):
        fn()
        assert xlmrxl.logging.get_verbosity() == want == logging.getLogger("xlmrxl").level
    with pytest.raises(ValueError, match="'loud' is not a level.*debug, info, warning"):
        xlmrxl.logging.set_verbosity("loud")
    with pytest.raises(TypeError, match="logging level"):
        xlmrxl.logging.set_verbosity(None)
    assert xlmrxl.logging.get_logger() is logging.getLogger("xlmrxl")
    assert xlmrxl.logging.get_logger("corpus").name == "xlmrxl.corpus"


def test_default_handler_can_be_removed_and_restored(capsys, level):
    log = logging.getLogger("xlmrxl")
    xlmrxl.logging.disable_default_handler()
    try:
        log.warning("unseen-msg")
        assert "unseen-msg" not in capsys.readouterr().err
    finally:
        xlmrxl.logging.enable_default_handler()
    log.warning("seen-msg")
    assert capsys.readouterr().err.count("seen-msg") == 1


def test_records_still_reach_caplog(caplog):
    with caplog.at_level(logging.WARNING, logger="xlmrxl"):
        logging.getLogger("xlmrxl").warning("cap-msg")
    assert "cap-msg" in caplog.text


def test_stdlib_logging_is_not_shadowed():
    import xlmrxl.cli
    import xlmrxl.corpus.store

    assert xlmrxl.logging.__name__ == "xlmrxl.logging"
    for mod in (xlmrxl.cli, xlmrxl.corpus.store):
        assert mod.logging is logging  # `import logging` inside the package is the standard library's


def test_every_logger_is_the_librarys():
    """xlmrxl_kernels never imports xlmrxl, so xlmrxl.logging can configure its messages only by their name."""
    names = set()
    for pkg in ("xlmrxl", "xlmrxl_kernels"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "xlmrxl" / "logging.py":  # the module that configures the name
                continue
            names |= set(re.findall(r"logging\.getLogger\(([^)]*)\)", path.read_text(encoding="utf-8")))
    names -= {'"transformers"', ""}  # demo.py quiets transformers' own logger; getLogger() is the root
    assert names <= {'"xlmrxl"', '"xlmrxl_kernels"'}, names  # both configured by xlmrxl.logging
