"""Shared benchmark harness: environment facts, timing, result rows, and the results directory.

Every benchmark script builds rows with `row(...)` and hands them to `write_results(name, rows)`, which writes
`benchmarks/results/<device>/<name>.json` and `<name>.md`. On a machine without a GPU, GPU benchmarks call
`require_gpu()` which prints why and exits 0.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def device_slug() -> str:
    return "".join(c if c.isalnum() else "-" for c in device_name().lower()).strip("-")


def environment() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    try:
        import transformers

        transformers_version = transformers.__version__
    except Exception:
        transformers_version = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
    except Exception:
        commit = None
    return {
        "device": device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "transformers": transformers_version,
        "python": sys.version.split()[0],
        "commit": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def require_gpu(what: str) -> None:
    """Exit 0 with a message when there is no CUDA device (benchmarks never fail for lack of a GPU)."""
    if not torch.cuda.is_available():
        print(f"{what}: no CUDA GPU on this machine ({device_name()}); skipped. Run it on an H100/H200.")
        raise SystemExit(0)


def bench(fn: Callable[[], object], *, warmup: int = 10, rep: int = 50) -> dict:
    """Median / p20 / p80 time of `fn` in milliseconds over ``rep`` calls after ``warmup`` untimed calls (counts,
    on every device). GPU: one pair of CUDA events per call (device time, the host may run ahead); CPU: wall
    clock."""
    for _ in range(warmup):
        fn()
    times = []
    if torch.cuda.is_available():
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rep)]
        torch.cuda.synchronize()
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(rep):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"ms": statistics.median(times), "ms_p20": times[len(times) // 5], "ms_p80": times[(4 * len(times)) // 5]}


def try_bench(fn: Callable[[], object], *, warmup: int = 10, rep: int = 50):
    """``(median ms, None)``, or ``(None, error)`` when ``fn`` cannot run here: a peer that rejects the input or is
    missing is reported in the results, not fatal."""
    try:
        return bench(fn, warmup=warmup, rep=rep)["ms"], None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__


@contextlib.contextmanager
def default_dtype(dtype):
    """Build modules directly in ``dtype`` (no fp32 copy of a 3.5B-parameter model first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written) in GB/s: the ceiling for memory-bound ops."""
    n = nbytes // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda" if torch.cuda.is_available() else "cpu")
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src))["ms"]
    return 2 * src.numel() * src.element_size() / (t * 1e-3) / 1e9


def matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    """Measured dense GEMM throughput in TFLOP/s: the ceiling for compute-bound ops."""
    a = torch.randn(n, n, dtype=dtype, device="cuda")
    b = torch.randn(n, n, dtype=dtype, device="cuda")
    t = bench(lambda: a @ b)["ms"]
    return 2 * n**3 / (t * 1e-3) / 1e12


class LiveRows(list):
    """Result rows that are also written to ``<out>/<name>.partial.json`` after every ``append`` / ``extend`` (raw
    rows + environment): a benchmark killed by a timeout keeps what it measured. ``write_results`` for the same
    name then writes the final files and removes the partial one."""

    def __init__(self, name: str, out_dir: Path | None = None):
        super().__init__()
        self.name = name
        self.out = Path(out_dir) if out_dir is not None else RESULTS / device_slug()
        self._env = None

    def _flush(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self._env is None:
            self._env = environment()
        payload = {"benchmark": self.name, "environment": self._env, "partial": True, "rows": list(self)}
        tmp = self.out / f".{self.name}.partial.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / f"{self.name}.partial.json")

    def append(self, row) -> None:
        super().append(row)
        self._flush()

    def extend(self, rows) -> None:
        super().extend(rows)
        self._flush()

    def __iadd__(self, rows):
        self.extend(rows)
        return self


def write_results(
    name: str,
    rows: Iterable[dict],
    *,
    columns: list[str] | None = None,
    extra: dict | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Write rows as JSON (with the environment) and as a markdown table; return the directory."""
    rows = list(rows)
    out = Path(out_dir) if out_dir is not None else RESULTS / device_slug()
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    payload = {"benchmark": name, "environment": env, "rows": rows, **(extra or {})}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    cols = columns or (list(rows[0].keys()) if rows else [])
    lines = [
        f"### {name}",
        "",
        f"{env['device']} · torch {env['torch']} · triton {env['triton']} · commit {env['commit']} · {env['date']}",
        "",
    ]
    if cols:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.partial.json").unlink(missing_ok=True)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
