"""``xlmrxl.comet.load(...).predict`` shows COMET's progress bar on stderr when asked (``progress=True``,
``XLMRXL_PROGRESS=on``) and not in a pipe by default; an explicit ``progress_bar=`` still wins."""

from __future__ import annotations

import pytest

pytest.importorskip("comet")

import _client_fixtures  # noqa: E402,F401

import xlmrxl.comet  # noqa: E402
from benchmarks.clients_models import comet_model, encoder_dir, wmt_samples  # noqa: E402
from xlmrxl_kernels import env  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from test_comet import _save_checkpoint

    xl = encoder_dir(tmp_path_factory.mktemp("xl-tiny"))
    return _save_checkpoint(comet_model("kiwi", xl), tmp_path_factory.mktemp("kiwi") / "kiwi-tiny")


def test_predict_progress(root, capfd, monkeypatch):
    data = wmt_samples(6, 1, 20, seed=3)
    quiet = xlmrxl.comet.load(root, dtype="float32", device="cpu")
    capfd.readouterr()
    a = quiet.predict(data, batch_size=2, gpus=0)
    assert "Predicting" not in capfd.readouterr().err  # stderr is not a terminal here
    loud = xlmrxl.comet.load(root, dtype="float32", device="cpu", progress=True)
    capfd.readouterr()
    b = loud.predict(data, batch_size=2, gpus=0)
    assert "Predicting" in capfd.readouterr().err
    assert a.scores == b.scores
    loud.predict(data, batch_size=2, gpus=0, progress_bar=False)
    assert "Predicting" not in capfd.readouterr().err
    monkeypatch.setenv("XLMRXL_PROGRESS", "on")
    env.refresh()
    quiet.predict(data, batch_size=2, gpus=0)
    assert "Predicting" in capfd.readouterr().err
