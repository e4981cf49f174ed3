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


@pytest.mark.parametrize("name", ["compile_sm90", "kernel_resources", "probe", "roofline"])
def test_tool_help(name, capsys):
    mod = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--help"])
    assert exc.value.code == 0 and "usage" in capsys.readouterr().out.lower()


def test_kernel_resources_on_an_empty_cache(tmp_path):
    from benchmarks import kernel_resources

    assert kernel_resources.main(["--cache", str(tmp_path / "none"), "--out", str(tmp_path)]) == 0
    assert "| kernel |" in (tmp_path / "kernel_resources.md").read_text()


def test_compile_sm90_plan_covers_every_kernel():
    """The ahead-of-time sweep enumerates every kernel and config (compiling them takes minutes: not run here)."""
    from benchmarks import compile_sm90

    names = [j[0] for j in compile_sm90.jobs(quick=False)]
    assert len(names) > 600
    for kind in ("attn tiled", "attn decode", "attn combine", "linear ", "linear split-K", "linear finalize",
                 "int4 tiled", "int4 small", "int4 finalize", "add_layernorm"):  # fmt: skip
        assert any(n.startswith(kind) for n in names), kind


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


def test_e2e_peers_and_partial_results(tmp_path):
    from benchmarks import bench_e2e

    assert bench_e2e.main(["--tiny", "--peers", "hf-sdpa", "--name", "e2e_part", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "e2e_part.md").read_text()
    assert "hf-sdpa" in text and "xlmrxl" not in text.split("|---")[-1]


def test_live_rows_survive_a_killed_run(tmp_path):
    import json

    from benchmarks import harness

    rows = harness.LiveRows("demo", tmp_path)
    rows.append({"a": 1})
    rows += [{"a": 2}, {"a": 3}]
    data = json.loads((tmp_path / "demo.partial.json").read_text())  # what a killed run leaves
    assert data["partial"] and [r["a"] for r in data["rows"]] == [1, 2, 3] and "device" in data["environment"]
    harness.write_results("demo", rows, out_dir=tmp_path)
    assert not (tmp_path / "demo.partial.json").exists() and (tmp_path / "demo.json").exists()
