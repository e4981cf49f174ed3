"""The device's own limits, measured: a large bf16 cuBLAS GEMM (TFLOP/s) and a large copy (GB/s read + write).

    python -m benchmarks.probe [--out DIR] [--tiny]

Writes ``probe.json`` (``bf16_tflops``, ``copy_gbs``, the device and the sizes) and ``probe.md`` to ``--out``. Every
``% of roofline`` column of the other benchmarks divides by these numbers (``benchmarks.harness.peaks``, which reads
this file through ``LEASE_PEAKS_JSON`` when the lease set it), never by datasheet figures. ``--tiny`` (or no GPU)
measures small sizes on the CPU in fp32 so the script itself can be checked; those numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks import harness


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    p.add_argument("--tiny", action="store_true", help="small sizes on the CPU (checks the script only)")
    p.add_argument("--quick", action="store_true", help="accepted for symmetry with the other benchmarks")
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.tiny
    n, nbytes = (8192, 1 << 30) if gpu else (512, 1 << 24)
    tflops = harness.measured_matmul_tflops(n, torch.bfloat16 if gpu else torch.float32)
    gbs = harness.measured_copy_gbs(nbytes)
    env = harness.environment()
    data = {
        "device": env["device"],
        "bf16_tflops": tflops,
        "copy_gbs": gbs,
        "gemm_n": n,
        "copy_bytes": nbytes,
        "dtype": "bf16" if gpu else "fp32 (cpu: not a bf16 peak)",
        "environment": env,
    }
    out = Path(args.out) if args.out is not None else harness.RESULTS / harness.device_slug()
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "probe.md").write_text(
        "### probe\n\n"
        f"{env['device']} · torch {env['torch']} · commit {env['commit']} · {env['date']}\n\n"
        "| measure | value | size |\n|---|---|---|\n"
        f"| dense GEMM ({data['dtype']}) | {tflops:.1f} TFLOP/s | {n}^3 |\n"
        f"| copy (read + write) | {gbs:.0f} GB/s | {nbytes / 2**20:.0f} MiB |\n"
    )
    print(f"probe: {tflops:.1f} TFLOP/s, {gbs:.0f} GB/s on {env['device']}; wrote {out / 'probe.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
