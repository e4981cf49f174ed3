"""``xlmrxl demo``: builds its checkpoint once and deterministically, checks the fused padding-free path against the
exact path on a mixed-length multilingual batch (tolerance printed), times them interleaved with min / median and
speed-ups, adds transformers as a row when it is importable (and says how to add it when not), says the weights are
random, and runs on a real checkpoint with ``--model DIR``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipelines import make_checkpoint

from xlmrxl.cli import main
from xlmrxl.demo import demo_batch, run_demo
from xlmrxl_kernels import env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XLMRXL_CACHE", str(tmp_path / "cache"))
    env.refresh()
    return tmp_path / "cache"


def test_demo_quick_compares_two_paths_and_transformers(cache, capsys):
    pytest.importorskip("transformers")
    argv = ["demo", "--quick", "--backends", "reference", "--repeats", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "xlmrxl demo --model DIR" in out and "meaningless" in out
    assert "padding" in out and "% of the batch" in out
    check = out[out.index("check:") : out.index("forward latency")]
    assert "tolerance 0.0001" in check and check.count(" ok ") == 2, check  # fused and transformers vs exact
    timing = out[out.index("forward latency") :]
    for row in ("exact path", "fused, padding-free, PyTorch ops", "transformers"):
        assert row in timing, row
    assert "min" in timing and "median" in timing and "x\n" in timing and "vs transformers" in timing
    assert "check passed" in out
    built = cache / "demo-quick"
    assert (built / "model.safetensors").is_file() and (built / "sentencepiece.bpe.model").is_file()
    cfg = json.loads((built / "config.json").read_text())
    assert cfg["vocab_size"] % 128 == 0 and cfg["hidden_size"] // cfg["num_attention_heads"] == 80
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out


def test_demo_result_dict(cache):
    import io

    res = run_demo(io.StringIO(), quick=True, backends=["reference"], compare_transformers=False, repeats=2)
    assert res["ok"] and [c["name"] for c in res["checks"]] == ["fused-reference"]
    assert res["checks"][0]["max_abs_diff"] <= res["checks"][0]["tolerance"] == 1e-4
    assert set(res["timings_ms"]) == {"exact", "fused-reference"}
    assert all(t["runs"] == 2 and t["min"] <= t["median"] for t in res["timings_ms"].values())
    assert res["speedup"]["exact"] == 1.0 and res["speedup"]["fused-reference"] > 0
    assert 0.2 < res["padding_avoided"] < 0.9 and res["real_tokens"] < res["padded_tokens"]


def test_demo_batch_is_mixed_length_and_multilingual():
    texts = demo_batch(16)
    assert texts == demo_batch(16) and len(set(map(len, texts))) > 8
    assert any(ord(c) > 0x3000 for t in texts for c in t) and any(c.isascii() and c.isalpha() for t in texts for c in t)


def test_demo_build_is_deterministic(cache, tmp_path, monkeypatch):
    from xlmrxl.demo import build_demo_checkpoint

    first = build_demo_checkpoint(quick=True)
    monkeypatch.setenv("XLMRXL_CACHE", str(tmp_path / "cache2"))
    env.refresh()
    again = build_demo_checkpoint(quick=True)
    assert again != first
    for name in ("model.safetensors", "sentencepiece.bpe.model"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name


def test_demo_without_transformers(cache):
    """transformers made unimportable in a fresh interpreter: the demo still compares the two paths."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from xlmrxl.cli import main\n"
        "sys.exit(main(['demo', '--quick', '--repeats', '2']))\n"
    )
    envs = {**os.environ, "XLMRXL_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=envs, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exact path" in r.stdout and "fused, padding-free" in r.stdout and "speed-up" in r.stdout
    assert "transformers is not installed" in r.stdout and "transformers 4" not in r.stdout
    assert "check passed" in r.stdout


def test_demo_on_a_given_checkpoint(spm_dir, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", spm_dir)
    assert main(["demo", "--model", str(ckpt), "--no-transformers", "--repeats", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"on the checkpoint {ckpt}" in out and "RANDOM" not in out and "check passed" in out
    assert main(["demo", "--model", str(tmp_path / "nothing")]) == 1
    assert "no config.json" in capsys.readouterr().err
