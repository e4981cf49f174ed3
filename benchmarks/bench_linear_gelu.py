"""GEMM + fused epilogue (``linear_gelu``, ``linear_residual``) vs cuBLAS and torch.compile, in TFLOP/s.

FLOPs per call: 2 x M x N x K (the epilogue's O(M x N) work is not counted). TFLOP/s = FLOPs / median time; the
ceiling is a dense bf16 GEMM measured in the same run (``harness.matmul_tflops``).

Columns, per shape:
- ``gemm``: cuBLAS ``x @ w.T`` with no bias and no activation (the bare GEMM: the target is >= 85 % of it);
- ``ours_noepi``: our kernel with the epilogue switched off (so ``epi_extra_pct`` = the epilogue's own cost; target
  <= 3 %);
- ``eager``: ``F.gelu(F.linear(x, w, b))`` / ``r + F.linear(x, w, b)`` (cuBLAS with bias, then a second kernel);
- ``compile``: ``torch.compile`` of the eager function.
Shapes are XLM-R-XL's: FFN up 2560 -> 10240 (+GELU), FFN down 10240 -> 2560 (+residual), attention output
2560 -> 2560 (+residual), at M = 4096 .. 16384 tokens, and at M = 16 and 128 (latency batches: memory-bound). At
M <= 128 every timed call first evicts L2 (``harness.bench(flush_l2=True)``: the weights come from HBM, as they do
in a forward); the ``l2`` column says which rows were flushed. ``pct_of_roofline`` is our time against the op's
floor (``benchmarks.roofline.linear``) on the peaks the lease's probe measured.

``--tiny`` runs tiny shapes on CPU with the Triton interpreter (to check the script itself; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import harness, roofline

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_RUN = {"device": "cuda", "warmup": 10, "rep": 50}
# (op, K, N): the three fused GEMMs of an XL layer
SHAPES = [("gelu", 2560, 10240), ("residual", 10240, 2560), ("residual", 2560, 2560)]


def _eager_gelu(x, w, b):
    return F.gelu(F.linear(x, w, b))


def _eager_residual(x, w, b, r):
    return r + F.linear(x, w, b)


def _time(fn, flush_l2: bool = False):
    return harness.try_bench(fn, warmup=_RUN["warmup"], rep=_RUN["rep"], flush_l2=flush_l2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one token count (8192) instead of 4096-16384")
    p.add_argument("--dtypes", nargs="*", default=["bf16", "fp16"], choices=list(DTYPES))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<gpu>)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET (script check)")
    args = p.parse_args(argv)
    shapes = SHAPES
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is first imported
        _RUN.update(device="cpu", warmup=0, rep=2)
        args.no_compile, args.dtypes = True, ["fp32"]
        DTYPES["fp32"] = torch.float32
        token_counts, shapes = [8, 40], [("gelu", 64, 96), ("residual", 96, 64)]
    else:
        harness.require_gpu("bench_linear_gelu")
        token_counts = [16, 128, 8192] if args.quick else [16, 128, 4096, 8192, 16384]
    roof = harness.peaks()  # the probe's numbers in a lease (or measured now); None on a CPU without a probe
    peak = roof.tflops if roof else None

    from xlmrxl_kernels.gemm import _EPI_NONE, _launch, linear_gelu, linear_residual

    dev = _RUN["device"]
    comp_gelu = None if args.no_compile else torch.compile(_eager_gelu)
    comp_res = None if args.no_compile else torch.compile(_eager_residual)
    rows = harness.LiveRows("linear_gelu_tiny_cpu" if args.tiny else "linear_gelu", args.out)  # written after every row
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for op, K, N in shapes:
            for M in token_counts:
                x = torch.randn(M, K, device=dev, dtype=dtype)
                w = torch.randn(N, K, device=dev, dtype=dtype) / K**0.5
                b = torch.randn(N, device=dev, dtype=dtype)
                r = torch.randn(M, N, device=dev, dtype=dtype)
                flops = 2.0 * M * N * K
                fl = M <= 128  # latency rows: weights from HBM, not from the L2 the previous call warmed
                cost = roofline.linear(M, K, N, dtype_bytes=x.element_size(), residual=op == "residual")
                t_gemm, _ = _time(lambda: x @ w.t(), fl)
                t_noepi, _ = _time(lambda: _launch(x, w, None, None, _EPI_NONE), fl)
                if op == "gelu":
                    t_ours, _ = _time(lambda: linear_gelu(x, w, b), fl)
                    t_eager, _ = _time(lambda: _eager_gelu(x, w, b), fl)
                    t_comp, note = (None, "skipped") if comp_gelu is None else _time(lambda: comp_gelu(x, w, b), fl)
                else:
                    t_ours, _ = _time(lambda: linear_residual(x, w, b, r), fl)
                    t_eager, _ = _time(lambda: _eager_residual(x, w, b, r), fl)
                    t_comp, note = (None, "skipped") if comp_res is None else _time(lambda: comp_res(x, w, b, r), fl)
                tf = lambda t: None if t is None else flops / (t * 1e-3) / 1e12  # noqa: E731
                rows.append(
                    {
                        "dtype": dname,
                        "op": op,
                        "M": M,
                        "K": K,
                        "N": N,
                        "l2": ("flushed" if fl else "warm") if torch.cuda.is_available() else "n/a (cpu)",
                        "ours_TFLOPs": tf(t_ours),
                        "pct_of_roofline": harness.pct_of_roofline(t_ours, cost, roof),
                        "eager_pct_of_roofline": harness.pct_of_roofline(t_eager, cost, roof),
                        "pct_of_peak": None if peak is None or t_ours is None else 100 * tf(t_ours) / peak,
                        "vs_bare_gemm": None if None in (t_ours, t_gemm) else t_gemm / t_ours,
                        "epi_extra_pct": None if None in (t_ours, t_noepi) else 100 * (t_ours / t_noepi - 1),
                        "x_vs_eager": None if None in (t_ours, t_eager) else t_eager / t_ours,
                        "x_vs_compile": None if None in (t_ours, t_comp) else t_comp / t_ours,
                        "gemm_TFLOPs": tf(t_gemm),
                        "eager_TFLOPs": tf(t_eager),
                        "compile_TFLOPs": tf(t_comp),
                        "ours_ms": t_ours,
                        "ours_noepi_ms": t_noepi,
                        "gemm_ms": t_gemm,
                        "eager_ms": t_eager,
                        "compile_ms": t_comp,
                        "note": note or "",
                    }
                )
                del x, w, b, r
    cols = [
        "dtype",
        "op",
        "M",
        "K",
        "N",
        "l2",
        "ours_TFLOPs",
        "pct_of_roofline",
        "eager_pct_of_roofline",
        "pct_of_peak",
        "vs_bare_gemm",
        "epi_extra_pct",
        "x_vs_eager",
        "x_vs_compile",
        "gemm_TFLOPs",
        "eager_TFLOPs",
        "compile_TFLOPs",
        "ours_ms",
        "gemm_ms",
        "note",
    ]
    name = "linear_gelu_tiny_cpu" if args.tiny else "linear_gelu"
    extra = {"peak_bf16_TFLOPs": peak, "peak_GBps": roof.gbs if roof else None}
    out = harness.write_results(name, rows, columns=cols, extra=extra, out_dir=args.out)
    print(f"linear_gelu: measured bf16 GEMM peak {peak if peak is None else round(peak)} TFLOP/s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
