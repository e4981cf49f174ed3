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


def _dist_version(name: str) -> str | None:
    """An installed distribution's version, read from its metadata (no import: transformers takes seconds)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    triton_version = _dist_version("triton") or _dist_version("pytorch-triton")
    transformers_version = _dist_version("transformers")
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


_L2_FLUSH: dict = {}


def _flush_l2() -> None:
    """Overwrite a 256 MiB buffer (5x the H100's and H200's 50 MB L2) so the next call reads its operands from HBM."""
    buf = _L2_FLUSH.get("buf")
    if buf is None:
        buf = _L2_FLUSH["buf"] = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    buf.zero_()


def bench(fn: Callable[[], object], *, warmup: int = 10, rep: int = 50, flush_l2: bool = False) -> dict:
    """Median / p20 / p80 time of `fn` in milliseconds over ``rep`` calls after ``warmup`` untimed calls (counts,
    on every device). GPU: one pair of CUDA events per call (device time, the host may run ahead); CPU: wall
    clock. ``flush_l2``: on a GPU, evict L2 before every timed call (outside the timed events), so small-M GEMMs
    read their weights from HBM as in a real forward, not from a cache the previous call warmed."""
    for _ in range(warmup):
        fn()
    times = []
    if torch.cuda.is_available():
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rep)]
        torch.cuda.synchronize()
        for start, end in events:
            if flush_l2:
                _flush_l2()
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


def try_bench(fn: Callable[[], object], *, warmup: int = 10, rep: int = 50, flush_l2: bool = False):
    """``(median ms, None)``, or ``(None, error)`` when ``fn`` cannot run here: a peer that rejects the input or is
    missing is reported in the results, not fatal."""
    try:
        return bench(fn, warmup=warmup, rep=rep, flush_l2=flush_l2)["ms"], None
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


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def measured_copy_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written) in GB/s, measured now on random data."""
    src = torch.randn(nbytes // 4, device=_device()).to(torch.bfloat16)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), warmup=5, rep=20)["ms"]
    return 2 * src.numel() * src.element_size() / (t * 1e-3) / 1e9


def measured_matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    """Dense GEMM throughput in TFLOP/s, measured now on random data (cuBLAS on a GPU)."""
    a = torch.randn(n, n, device=_device()).to(dtype)
    b = torch.randn(n, n, device=_device()).to(dtype)
    t = bench(lambda: a @ b, warmup=5, rep=20)["ms"]
    return 2 * n**3 / (t * 1e-3) / 1e12


def _probed() -> dict | None:
    """The probe the lease ran first (``LEASE_PEAKS_JSON``), when it was measured on this device."""
    path = os.environ.get("LEASE_PEAKS_JSON")
    if not path or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("device") == device_name() else None


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Copy bandwidth in GB/s: the lease's probe of this device when there is one, else measured now."""
    probed = _probed()
    return float(probed["copy_gbs"]) if probed else measured_copy_gbs(nbytes)


def matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    """Dense bf16 GEMM TFLOP/s: the lease's probe of this device when there is one, else measured now."""
    probed = _probed()
    return float(probed["bf16_tflops"]) if probed else measured_matmul_tflops(n, dtype)


def peaks():
    """This device's ``roofline.Peak`` (probe or measurement on a GPU; the probe's CPU numbers in a rehearsal;
    else None: no roofline column on a CPU without a probe)."""
    from benchmarks.roofline import Peak

    probed = _probed()
    if probed:
        return Peak(float(probed["bf16_tflops"]), float(probed["copy_gbs"]))
    if torch.cuda.is_available():
        return Peak(matmul_tflops(), copy_bandwidth_gbs())
    return None


def pct_of_roofline(ms, cost, peak):
    """100 x (the op's floor on this device) / measured time: see ``benchmarks.roofline``."""
    from benchmarks.roofline import pct_of_roofline as pct

    return pct(ms, cost, peak)


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
