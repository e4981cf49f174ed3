"""benchmarks/bench_serve.py: --help, and a tiny CPU run with few requests writing every peer's rows at 1, 16 and
64 clients (sentence-transformers: a row saying why it was skipped when it is not installed).

Speed is never asserted: the numbers are the benchmark's business (benchmarks/results/)."""

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from benchmarks import bench_serve  # noqa: E402


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_serve.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--tiny" in out and "--quick" in out and "--out" in out


def test_tiny_quick_run(tmp_path):
    assert bench_serve.main(["--tiny", "--quick", "--requests", "24", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "serve_tiny.json").read_text())
    rows = result["rows"]
    ours = [r for r in rows if r["peer"] == "xlmrxl serve"]
    assert [r["clients"] for r in ours] == [1, 16, 64]
    assert all(r["req_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 and r["max_diff_vs_xlmrxl"] == 0 for r in ours)
    base = [r for r in rows if r["peer"] == "fastapi+transformers"]
    assert [r["clients"] for r in base] == [1, 16, 64] and all(r["max_diff_vs_xlmrxl"] < 1e-5 for r in base)
    assert any(r["peer"] == "fastapi+sentence-transformers" for r in rows)
    assert "| xlmrxl serve |" in (tmp_path / "serve_tiny.md").read_text()
