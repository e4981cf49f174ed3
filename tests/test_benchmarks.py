"""The benchmark scripts import, answer --help, and (for the end-to-end one) run a tiny CPU configuration.

Speed is never asserted here: numbers come from the benchmark suite on a GPU (benchmarks/results/)."""

import importlib
import pathlib

import pytest

SCRIPTS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_help(name, capsys):
    mod = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_run_help(capsys):
    from benchmarks import run

    with pytest.raises(SystemExit) as exc:
        run.main(["--help"])
    assert exc.value.code == 0


TINY = [n for n in SCRIPTS if '"--tiny"' in (pathlib.Path(__file__).parents[1] / "benchmarks" / f"{n}.py").read_text()]


@pytest.mark.parametrize("name", TINY)
def test_benchmark_tiny_runs(name, tmp_path):
    """Each GPU benchmark's `--tiny` mode runs its whole code path on CPU at toy sizes (numbers mean nothing)."""
    mod = importlib.import_module(f"benchmarks.{name}")
    code = mod.main(["--tiny", "--quick", "--out", str(tmp_path)])
    assert code in (0, None)
    assert list(tmp_path.glob("*.json")), f"{name} --tiny wrote no results"


def test_e2e_tiny_has_every_peer(tmp_path):
    from benchmarks import bench_e2e

    assert bench_e2e.main(["--tiny", "--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "e2e_tiny_cpu.md").read_text()
    for peer in ("hf-sdpa", "xlmrxl", "hf+xlmrxl.accelerate"):
        assert peer in text
