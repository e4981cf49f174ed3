"""The device's own limits, measured: a large bf16 cuBLAS GEMM (TFLOP/s) and a large copy (GB/s read + write).

    python -m benchmarks.probe [--out DIR] [--tiny]

Writes ``probe.json`` (``bf16_tflops``, ``copy_gbs``, the device and the sizes) and ``probe.md`` to ``--out``. Every
``% of roofline`` column of the other benchmarks divides by these numbers (``benchmarks.harness.peaks``, which reads
this file through ``LEASE_PEAKS_JSON`` when the lease set it), never by datasheet figures. ``--tiny`` (or no GPU)
measures small sizes on the CPU in fp32 so the script itself can be checked; those numbers mean nothing.
"""

from __future__ import annotations

import argparse
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
    extra = {
        "device": harness.device_name(),
        "bf16_tflops": tflops,
        "copy_gbs": gbs,
        "dtype": "bf16" if gpu else "fp32 (cpu: not a bf16 peak)",
    }
    rows = [
        {"measure": f"dense GEMM ({extra['dtype']})", "value": tflops, "unit": "TFLOP/s", "size": f"{n}^3"},
        {"measure": "copy (read + write)", "value": gbs, "unit": "GB/s", "size": f"{nbytes / 2**20:.0f} MiB"},
    ]
    out = harness.write_results("probe", rows, extra=extra, out_dir=args.out)
    print(f"probe: {tflops:.1f} TFLOP/s, {gbs:.0f} GB/s on {extra['device']}; wrote {out / 'probe.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
