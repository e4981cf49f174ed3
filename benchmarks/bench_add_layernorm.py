"""Fused residual add + LayerNorm: xlmrxl's Triton kernel vs eager PyTorch and torch.compile, in GB/s.

Bytes moved per call (the minimum for this op): read x and residual, write y and h = 4 x rows x N x element size
(weight and bias, 2 x N, are negligible). GB/s = bytes / median time; the ceiling is the device-to-device copy
bandwidth measured in the same run (``harness.copy_bandwidth_gbs``: the lease's probe). ``pct_of_roofline``: our time
against ``benchmarks.roofline.add_layernorm``'s floor on the probe's peaks.

Peers: eager ``h = x + r; y = F.layer_norm(h, ...)`` (two kernels, h written then re-read) and ``torch.compile`` of
that function. Shapes: rows of 2560 (XL) and 4096 (XXL), 8k-64k rows, fp16 and bf16. Target
(shared/docs/performance-targets.md): >= 85 % of copy bandwidth and >= 2x eager at >= 8k rows of 2560.

``--tiny`` runs tiny shapes on CPU with the Triton interpreter (to check the script itself; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import harness, roofline

logger = logging.getLogger("xlmrxl")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_RUN = {"device": "cuda", "warmup": 10, "rep": 50}  # --tiny: CPU, 0 + 2 calls


def _eager(x, r, w, b, eps):
    h = x + r
    return F.layer_norm(h, (x.shape[-1],), w, b, eps), h


def _time(fn):
    return harness.try_bench(fn, warmup=_RUN["warmup"], rep=_RUN["rep"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one row count per width (16k) instead of 8k-64k")
    p.add_argument("--dtypes", nargs="*", default=["fp16", "bf16"], choices=list(DTYPES))
    p.add_argument("--widths", nargs="*", type=int, default=[2560, 4096], help="row widths N")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<gpu>)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET (script check)")
    args = p.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is first imported
        _RUN.update(device="cpu", warmup=0, rep=2)
        args.widths, args.no_compile, args.dtypes = [80], True, ["fp32"]
        row_counts = [64]
    else:
        harness.require_gpu("bench_add_layernorm")
        row_counts = [16384] if args.quick else [8192, 16384, 32768, 65536]
    roof = harness.peaks()  # the lease's probe (or measured now); None on a CPU without a probe
    copy_gbs = roof.gbs if roof else harness.measured_copy_gbs(1 << 20)

    from xlmrxl_kernels.norm import add_layernorm

    dev = _RUN["device"]
    compiled = None if args.no_compile else torch.compile(_eager)
    rows = harness.LiveRows(
        "add_layernorm_tiny_cpu" if args.tiny else "add_layernorm", args.out
    )  # written after every row
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for n in args.widths:
            for m in row_counts:
                x = torch.randn(m, n, device=dev, dtype=dtype)
                r = torch.randn(m, n, device=dev, dtype=dtype)
                w = torch.randn(n, device=dev, dtype=dtype)
                b = torch.randn(n, device=dev, dtype=dtype)
                nbytes = 4 * m * n * x.element_size()
                cost = roofline.add_layernorm(m, n, dtype_bytes=x.element_size())
                t_ours, _ = _time(lambda: add_layernorm(x, r, w, b, 1e-5))
                t_eager, _ = _time(lambda: _eager(x, r, w, b, 1e-5))
                t_comp, comp_err = (None, "skipped") if compiled is None else _time(lambda: compiled(x, r, w, b, 1e-5))
                gbs = lambda t: None if t is None else nbytes / (t * 1e-3) / 1e9  # noqa: E731
                rows.append(
                    {
                        "dtype": dname,
                        "N": n,
                        "rows": m,
                        "xlmrxl_ms": t_ours,
                        "eager_ms": t_eager,
                        "compile_ms": t_comp,
                        "xlmrxl_GBps": gbs(t_ours),
                        "eager_GBps": gbs(t_eager),
                        "compile_GBps": gbs(t_comp),
                        "pct_of_copy": None if t_ours is None else 100 * gbs(t_ours) / copy_gbs,
                        "pct_of_roofline": harness.pct_of_roofline(t_ours, cost, roof),
                        "x_vs_eager": None if None in (t_ours, t_eager) else t_eager / t_ours,
                        "x_vs_compile": None if None in (t_ours, t_comp) else t_comp / t_ours,
                        "note": comp_err or "",
                    }
                )
    cols = [
        "dtype",
        "N",
        "rows",
        "xlmrxl_GBps",
        "pct_of_copy",
        "pct_of_roofline",
        "eager_GBps",
        "compile_GBps",
        "x_vs_eager",
        "x_vs_compile",
        "xlmrxl_ms",
        "eager_ms",
        "compile_ms",
        "note",
    ]
    name = "add_layernorm_tiny_cpu" if args.tiny else "add_layernorm"
    out = harness.write_results(name, rows, columns=cols, extra={"copy_GBps": copy_gbs}, out_dir=args.out)
    print(f"add_layernorm: copy bandwidth {copy_gbs:.0f} GB/s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
