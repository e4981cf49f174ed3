"""The client benchmarks' ``--tiny`` mode runs its whole path on CPU at toy sizes in the client environments
(numbers mean nothing; speed is never asserted) and records scores / embeddings equal to the unaccelerated peer's."""

from __future__ import annotations

import json

import pytest


def test_bench_comet_tiny(tmp_path):
    pytest.importorskip("comet")
    from benchmarks import bench_comet

    assert bench_comet.main(["--tiny", "--quick", "--segments", "12", "--rep", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "comet_tiny_cpu.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"xcomet-xl-tiny", "cometkiwi-xl-tiny"}
    assert {r["peer"] for r in rows} == {"comet", "comet+xlmrxl"}
    assert max(r["max_score_diff_vs_comet"] for r in rows) <= 1e-6


def test_bench_sentence_transformers_tiny(tmp_path):
    pytest.importorskip("sentence_transformers")
    from benchmarks import bench_sentence_transformers as bench

    assert bench.main(["--tiny", "--quick", "--sentences", "24", "--rep", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sentence_transformers_tiny_cpu.json").read_text())["rows"]
    assert {r["peer"] for r in rows} == {"sentence-transformers", "st+xlmrxl"}
    assert max(r["max_embedding_diff"] for r in rows) <= 1e-5
