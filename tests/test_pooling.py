"""One pooled-embedding default across ``xlmrxl embed``, ``xlmrxl corpus embed`` and
``pipeline("feature-extraction", pooling="auto")`` (mean, shown in every --help), the pipeline's own default
(token states, as transformers'), and a sentence-transformers checkpoint's pooling config winning, with the choice
printed on stderr."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_corpus import make_checkpoint

import xlmrxl
import xlmrxl.corpus
from xlmrxl import pooling
from xlmrxl.cli import main

TEXTS = ["The ferry leaves at six.", "Le marché du samedi déborde de fruits et de fleurs."]


@pytest.fixture(scope="module")
def plain(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("pool_plain"), spm_dir)


@pytest.fixture(scope="module")
def st_cls(plain, tmp_path_factory):
    """The same weights as a sentence-transformers directory that pools with <s> and normalises."""
    d = tmp_path_factory.mktemp("pool_st") / "model"
    shutil.copytree(plain, d)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    return d


@pytest.fixture(autouse=True)
def _say_again(monkeypatch):
    monkeypatch.setattr(pooling, "_SAID", set())


def _cli(model, capsys, *extra):
    assert main(["embed", "-", "--model", str(model), "--json", *extra]) == 0
    cap = capsys.readouterr()
    rows = [json.loads(x) for x in cap.out.splitlines()]
    return np.array([r["embedding"] for r in rows], dtype=np.float32), rows[0]["pooling"], cap.err


def _corpus(model, tmp_path, name):
    src = tmp_path / f"{name}.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = xlmrxl.corpus.run("embed", model, src, tmp_path / name, progress=False)["output"]
    manifest = json.loads((tmp_path / name / "_manifest.json").read_text())
    assert manifest["settings"]["options"]["pooling"] in ("cls", "mean")  # settled by the driver, not "auto"
    return np.asarray(pq.read_table(out).column("embedding").to_pylist(), dtype=np.float32)


def _stdin(monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(TEXTS) + "\n"))


def test_three_entry_points_agree_on_the_default(plain, tmp_path, monkeypatch, capsys):
    assert pooling.DEFAULT_POOLING == "mean"
    _stdin(monkeypatch)
    cli, name, _ = _cli(plain, capsys)
    assert name == "mean"
    corpus = _corpus(plain, tmp_path, "c")
    pipe = xlmrxl.pipeline("feature-extraction", model=str(plain), pooling="auto")(TEXTS).numpy()
    mean = xlmrxl.pipeline("feature-extraction", model=str(plain), pooling="mean")(TEXTS).numpy()
    for got in (cli, corpus, pipe):
        assert np.abs(got - mean).max() < 1e-5
    tokens = xlmrxl.pipeline("feature-extraction", model=str(plain))(TEXTS)  # as transformers': token states
    assert isinstance(tokens, list) and tokens[0].dim() == 2


def test_checkpoint_pooling_wins_and_is_printed(st_cls, tmp_path, monkeypatch, capsys):
    _stdin(monkeypatch)
    cli, name, err = _cli(st_cls, capsys)
    assert name == "cls" and "pooling cls" in err and "1_Pooling/config.json" in err and "normalisation" in err
    corpus = _corpus(st_cls, tmp_path, "c")
    pipe = xlmrxl.pipeline("feature-extraction", model=str(st_cls), pooling="auto")(TEXTS).numpy()
    want = xlmrxl.pipeline("feature-extraction", model=str(st_cls), pooling="cls", normalize=True)(TEXTS).numpy()
    for got in (cli, corpus, pipe):
        assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(cli, axis=1), 1.0, atol=1e-4)
    _stdin(monkeypatch)
    _, name, err = _cli(st_cls, capsys, "--pooling", "mean")  # an explicit choice wins, and is said
    assert name == "mean" and "pooling mean as asked" in err and "says cls" in err


def test_unsupported_checkpoint_pooling_is_a_clear_error(st_cls, tmp_path):
    d = tmp_path / "max"
    shutil.copytree(st_cls, d)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling max.*--pooling cls\\|mean"):
        pooling.resolve_pooling("auto", d)
    assert pooling.resolve_pooling("cls", d) == ("cls", False)
    with pytest.raises(ValueError, match="pooling='max' is not valid"):
        pooling.resolve_pooling("max", d)


def test_help_shows_the_default(capsys):
    for argv in (["embed", "--help"], ["corpus", "--help"]):
        assert main(argv) == 0
        text = "".join(capsys.readouterr().out.split())  # argparse wraps the help
        assert "auto(default):thecheckpoint'ssentence-transformerspoolingifithasone,elsemean" in text
