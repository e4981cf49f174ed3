"""benchmarks/bench_corpus.py: --help, and a tiny CPU run (no Ray: --quick) writing every peer's row.

Speed is never asserted: the numbers are the benchmark's business (benchmarks/results/)."""

import json

import pytest
import torch

from benchmarks import bench_corpus


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_corpus.main(["--help"])
    assert exc.value.code == 0 and "usage" in capsys.readouterr().out.lower()


def test_tiny_quick_run(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert bench_corpus.main(["--tiny", "--quick", "--rows", "40", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "corpus_tiny.json").read_text())
    peers = {r["peer"]: r for r in result["rows"]}
    assert {"transformers pipeline", "xlmrxl.pipeline", "corpus local"} <= set(peers)
    local = peers["corpus local"]
    assert local["rows_per_s"] > 0 and local["tokens_per_s"] > 0 and local["workers_seen"] == 1
    assert result["n_rows"] == 40 and "| corpus local |" in (tmp_path / "corpus_tiny.md").read_text()
