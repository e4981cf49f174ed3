"""A refused corpus resume names each setting whose value changed, old -> new (options by dotted name, input files by
path), through ``xlmrxl.corpus.run`` and the ``xlmrxl corpus`` command line."""

from __future__ import annotations

import pytest
from test_corpus import make_checkpoint

import xlmrxl.corpus
from xlmrxl.cli import main
from xlmrxl.corpus.store import settings_changes


def test_settings_changes_names_each_option_old_to_new():
    before = {"task": "embed", "options": {"pooling": "cls", "normalize": False}, "rows_per_block": 10}
    now = {"task": "embed", "options": {"pooling": "mean", "normalize": True}, "rows_per_block": 10, "x": 1}
    assert settings_changes(before, now) == [
        "options.normalize: False -> True",
        "options.pooling: 'cls' -> 'mean'",
        "x: (not set) -> 1",
    ]
    files_before = {"inputs": [["/d/a.txt", 10, 1], ["/d/b.txt", 5, 1]]}
    files_now = {"inputs": [["/d/a.txt", 12, 1], ["/d/c.txt", 5, 1]]}
    assert settings_changes(files_before, files_now) == [
        "inputs./d/a.txt.size: 10 -> 12",
        "inputs./d/b.txt: {'size': 5, 'mtime_ns': 1} -> (not set)",
        "inputs./d/c.txt: (not set) -> {'size': 5, 'mtime_ns': 1}",
    ]
    assert settings_changes(before, before) == []


@pytest.fixture(scope="module")
def mlm(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("resume_mlm"), spm_dir)


def test_refused_resume_names_the_changed_options(mlm, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("one line\nanother line\n", encoding="utf-8")
    out = tmp_path / "out"
    xlmrxl.corpus.run("embed", mlm, src, out, pooling="cls", progress=False)
    with pytest.raises(ValueError) as info:
        xlmrxl.corpus.run("embed", mlm, src, out, pooling="mean", normalize=True, rows_per_block=7, progress=False)
    msg = str(info.value)
    assert "options.pooling: 'cls' -> 'mean'" in msg
    assert "options.normalize: False -> True" in msg
    assert "rows_per_block: 10000 -> 7" in msg
    assert "model" not in msg.split("settings:")[1]  # unchanged settings are not listed
    argv = ["corpus", "embed", "--model", str(mlm), "--input", str(src), "--output", str(out), "--no-progress"]
    assert main(argv + ["--pooling", "mean"]) == 1
    err = capsys.readouterr().err
    assert "options.pooling: 'cls' -> 'mean'" in err and "resume" in err
