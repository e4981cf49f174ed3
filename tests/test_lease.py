"""The lease script (benchmarks/lease.sh) writes for the device tool's contract, fits its budget, and its CPU
rehearsal (LEASE_SIMULATE=1) runs the whole plan, leaving a bundle the tool brings back, even when killed half-way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEASE = ROOT / "benchmarks" / "lease.sh"
SIMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# what each step leaves in the results (CPU rehearsal names), when it succeeded
STEP_FILES = {
    "probe": ["probe.json", "probe.md"],
    "precompile": ["compile_sm90.json"],
    "e2e": ["e2e_tiny_cpu.json", "e2e_tiny_cpu.md"],
    "choices": ["choices.json"],
    "gpu-tests": ["gpu-tests.xml"],
    "attention": ["attention_tiny_cpu.json"],
    "linear-gelu": ["linear_gelu_tiny_cpu.json"],
    "add-layernorm": ["add_layernorm_tiny_cpu.json"],
    "int4": ["int4_tiny_cpu.json"],
    "cache-update": ["cache_update_tiny_cpu.json"],
    "decode": ["decode_tiny_cpu.json"],
    "kernel-resources": ["kernel_resources.json"],
}


def _dry_run(env=None):
    return subprocess.run(
        ["bash", str(LEASE), "--dry-run"], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def _plan():
    proc = _dry_run()
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, re.findall(r"^  (\S+)\s+(\d+) s  (.+)$", proc.stdout, re.M)


def test_dry_run_core_steps_fit_480_of_540_seconds():
    out, steps = _plan()
    core = [(n, int(b), c) for n, b, c in steps if "[extra" not in c]
    total = sum(b for _, b, _ in core)
    assert total <= 480 and f"core total {total} s of 540 s" in out
    names = [n for n, _, _ in core]
    # the device's peaks first, then the precompile, then the end-to-end numbers before any other benchmark
    assert names[:2] == ["probe", "precompile"] and names.index("e2e") < names.index("attention")
    assert names.index("e2e") < names.index("gpu-tests") and "choices" in names
    for needed in ("attention", "linear-gelu", "add-layernorm", "int4", "host-overhead", "build", "decode"):
        assert needed in names
    short = _dry_run({"LEASE_BUDGET_S": "300"})  # a lease the plan does not fit is refused
    assert short.returncode == 1 and "exceeds" in short.stderr


def test_every_step_calls_python3_with_flags_its_script_has():
    _, steps = _plan()
    plan_lines = re.findall(r'^  "([\w-]+)\|(.*)"$', LEASE.read_text(), re.M)  # device and rehearsal commands
    assert {n for n, _ in plan_lines} == {n for n, _, _ in steps}
    for name, cmd in [(n, c) for n, _, c in steps] + plan_lines:
        assert "$OUT" not in cmd, f"{name} writes to the device tool's $OUT directly"
        assert not re.search(r"(^|\s)python\s", cmd), f"{name} calls `python` (the device has python3)"
        for mod, args in re.findall(r"-m benchmarks\.(\w+)((?: --?[\w-]+(?: [^-&$'][^ &']*)*)*)", cmd):
            path = ROOT / "benchmarks" / f"{mod}.py"
            if not path.exists():
                conditional = "(if benchmarks/" in cmd or f"|benchmarks/{mod}.py|" in cmd
                assert conditional, f"{name}: {path} is missing and the step is not conditional"
                continue
            src = path.read_text()
            for flag in re.findall(r"(--[\w-]+)", args):
                assert f'"{flag}"' in src, f"{name}: {mod} has no {flag} option"


def test_the_results_directory_never_shadows_the_tools_out():
    text = LEASE.read_text()
    assert not re.search(r"^\s*(export\s+)?OUT=", text, re.M), "lease.sh assigns OUT: the device tool owns it"
    assert 'PY="${PYTHON:-python3}"' in text
    assert "MAX_JOBS=16" in text and "TORCH_CUDA_ARCH_LIST=9.0" in text and "TRITON_CACHE_AUTOTUNING=1" in text
    assert text.index("T0=$(date +%s)") < text.index("PY=")  # the clock starts at the top


def _check_bundle(out: Path, tmp: Path) -> tuple[dict, Path]:
    """The device tool's contract: at most 8 plain files directly under OUT, 16 MiB each, simple names."""
    entries = list(out.iterdir())
    assert len(entries) <= 8, sorted(p.name for p in entries)
    for p in entries:
        assert p.is_file() and not p.is_symlink(), f"{p.name} is not a plain file"
        assert SIMPLE_NAME.match(p.name), p.name
        assert p.stat().st_size <= 16 * 2**20, p.name
    names = {p.name for p in entries}
    assert {"SUMMARY.md", "steps.tsv", "results.tgz"} <= names
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines()[1:]:
        name, status, *_ = line.split("\t")
        steps[name] = status
    dest = tmp / "unpacked"
    proc = subprocess.run(
        ["bash", str(LEASE), "--unpack", str(out / "results.tgz"), str(dest)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return steps, dest


@pytest.mark.slow
def test_cpu_rehearsal_runs_the_whole_plan_and_bundles_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "LEASE_SIMULATE": "1", "OUT": str(out), "LEASE_RESULTS_DIR": str(tmp_path / "res")}
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(LEASE)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps, dest = _check_bundle(out, tmp_path)
    _, plan = _plan()
    for name, _, cmd in plan:
        assert name in steps, f"{name} not recorded"
        if "[extra" not in cmd:
            assert steps[name] == "ok" or steps[name].startswith("absent"), f"{name}: {steps[name]}"
    for name, files in STEP_FILES.items():
        for f in files:
            assert (dest / f).is_file(), f"results.tgz lacks {f} ({name})"
        assert (dest / f"{name}.log").is_file()
    summary = (out / "SUMMARY.md").read_text()
    assert "commit:" in summary and "| e2e | ok |" in summary and "### e2e_tiny_cpu" in summary
    assert "pct_of_roofline" in summary
    print(f"rehearsal: {time.monotonic() - t0:.0f} s")


@pytest.mark.slow
def test_a_run_killed_half_way_leaves_a_valid_bundle(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "LEASE_SIMULATE": "1", "OUT": str(out), "LEASE_RESULTS_DIR": str(tmp_path / "res")}
    proc = subprocess.Popen(
        ["bash", str(LEASE)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # kill -9 the whole run once two steps are recorded
            tsv = out / "steps.tsv"
            if tsv.exists() and len(tsv.read_text().splitlines()) >= 3:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # land in the middle of the next step
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    steps, dest = _check_bundle(out, tmp_path)
    assert steps.get("probe") == "ok", steps
    assert (dest / "probe.json").is_file() and (dest / "environment.txt").is_file()


def _unpack(*args):
    return subprocess.run(["bash", str(LEASE), "--unpack", *map(str, args)], capture_output=True, text=True)


def test_unpack_puts_a_bundle_under_results_and_refuses_others(tmp_path):
    top = tmp_path / "lease-results"
    top.mkdir()
    (top / "probe.json").write_text('{"device": "NVIDIA H100 80GB HBM3", "bf16_tflops": 1, "copy_gbs": 1}')
    (top / "e2e.md").write_text("### e2e\n")
    good = tmp_path / "good.tgz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(top, arcname="lease-results")
    proc = subprocess.run(
        ["bash", str(LEASE), "--unpack", str(good), str(tmp_path / "d")], capture_output=True, text=True
    )
    assert proc.returncode == 0 and (tmp_path / "d" / "e2e.md").is_file(), proc.stderr
    assert "H100" in proc.stdout
    bad = tmp_path / "bad.tgz"  # two top folders: not a lease bundle
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(top, arcname="a")
        tar.add(top, arcname="b")
    proc = subprocess.run(
        ["bash", str(LEASE), "--unpack", str(bad), str(tmp_path / "e")], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "one top folder" in proc.stderr
    (tmp_path / "junk.tgz").write_text("not a tarball")
    proc = _unpack(tmp_path / "junk.tgz")
    assert proc.returncode != 0 and "not a results.tgz" in proc.stderr
    proc = _unpack(tmp_path / "none.tgz")
    assert proc.returncode != 0 and "no such file" in proc.stderr
