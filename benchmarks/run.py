"""One entry point for the whole benchmark suite: `python -m benchmarks.run [--only NAME ...] [--quick]`.

It runs every benchmark the machine can run and writes raw results (JSON, with device, torch / triton /
transformers versions, commit and date) plus a markdown table per benchmark under `benchmarks/results/<device>/`,
then `SUMMARY.md` there joining the tables. On a machine with no GPU it says so and runs only the CPU part.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

import torch

from benchmarks import harness

CPU_BENCHMARKS = ["bench_cpu_forward"]
GPU_BENCHMARKS = [
    "bench_add_layernorm",
    "bench_attention",
    "bench_linear_gelu",
    "bench_int4",
    "bench_cache_update",
    "bench_e2e",
    "bench_decode",
    # the clients: they need unbabel-comet / sentence-transformers, i.e. the .venv-clients python of
    # `make test-clients` (PYTHONPATH=<checkout>); in an environment without them they say so and exit 0
    "bench_comet",
    "bench_sentence_transformers",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="run only these benchmarks (module names)")
    p.add_argument("--quick", action="store_true", help="pass --quick to each benchmark (fewer shapes)")
    args = p.parse_args(argv)

    names = list(CPU_BENCHMARKS)
    if torch.cuda.is_available():
        names += GPU_BENCHMARKS
    else:
        print(
            f"No CUDA GPU on this machine ({harness.device_name()}): running only the CPU benchmarks "
            f"({', '.join(CPU_BENCHMARKS)}). GPU benchmarks: {', '.join(GPU_BENCHMARKS)}."
        )
    if args.only:
        names = [n for n in names if n in args.only]

    failures = []
    for name in names:
        t0 = time.time()
        print(f"== {name}", flush=True)
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
            mod.main(["--quick"] if args.quick else [])
        except SystemExit as exc:  # a benchmark that exits 0 (e.g. its peer is missing) is not a failure
            if exc.code not in (0, None):
                failures.append(name)
        except Exception:
            traceback.print_exc()
            failures.append(name)
        print(f"   {name}: {time.time() - t0:.1f} s", flush=True)

    out = harness.RESULTS / harness.device_slug()
    if out.exists():
        parts = [f"# Benchmark results on {harness.device_name()}", ""]
        for md in sorted(out.glob("*.md")):
            if md.name != "SUMMARY.md":
                parts += [md.read_text(), ""]
        (out / "SUMMARY.md").write_text("\n".join(parts))
        print(f"results in {out}")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
