"""int4 group-128 weight-only matmul (``int4_matmul``) vs bf16 cuBLAS and torchao's tinygemm, per token count.

For few tokens the op is memory-bound: the unit is the effective bandwidth of the bytes it must move
(packed weight N*K/2 + scales and zeros 2 * (K/128) * N * 2 + x + y) against the device copy bandwidth measured in
the same run. For many tokens it is compute-bound: TFLOP/s (2 * M * N * K) against the measured bf16 GEMM peak.

Peers, same inputs: ``F.linear`` with the bf16 weight (cuBLAS; ``x_vs_bf16`` is the speed-up over it: targets
>= 3x at M <= 16, >= 2x at M = 64, >= 0.8x at M >= 2048) and torchao's int4 weight-only kernel
``torch.ops.aten._weight_int4pack_mm`` fed our weights converted to its layout (``export_torchao_int4`` +
``_convert_weight_to_int4pack``), where this torch has it. Shapes (K, N): (2560, 7680) fused QKV,
(2560, 10240) FFN up, (10240, 2560) FFN down; M in 1, 4, 16, 64, 256, 2048, 8192.

At M <= 128 every timed call (ours and the peers) first evicts L2 (``harness.bench(flush_l2=True)``): the 3.5-39 MB
weights would otherwise stay in the H100's 50 MB L2 between calls, and the row would measure L2, not HBM; the ``l2``
column says which rows were flushed. ``pct_of_roofline``: our time against ``benchmarks.roofline.int4_linear``'s
floor on the probe's peaks.

``--tiny`` runs tiny shapes on CPU with the Triton interpreter (to check the script itself; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import harness, roofline

_RUN = {"device": "cuda", "warmup": 10, "rep": 50}
SHAPES = [(2560, 7680), (2560, 10240), (10240, 2560)]
TOKENS = [1, 4, 16, 64, 256, 2048, 8192]
GROUP = 128


def _time(fn, flush_l2: bool = False):
    return harness.try_bench(fn, warmup=_RUN["warmup"], rep=_RUN["rep"], flush_l2=flush_l2)


def _tinygemm(qweight, scales, zeros):
    """A callable running torchao's tinygemm on our weights, or (None, why not)."""
    from xlmrxl_kernels.int4 import export_torchao_int4

    try:
        int_data, sz = export_torchao_int4(qweight, scales, zeros, GROUP)
        packed = torch.ops.aten._convert_weight_to_int4pack(int_data, 8)
        sz = sz.to(torch.bfloat16)
        return (lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz)), None
    except Exception as exc:
        return None, f"tinygemm unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="M in 1, 16, 64, 2048 only")
    p.add_argument("--no-torchao", action="store_true", help="skip the tinygemm peer")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<gpu>)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET (script check)")
    args = p.parse_args(argv)
    shapes, tokens, dtype = SHAPES, ([1, 16, 64, 2048] if args.quick else TOKENS), torch.bfloat16
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is first imported
        _RUN.update(device="cpu", warmup=0, rep=2)
        shapes, tokens, dtype, args.no_torchao = [(256, 96)], [1, 80], torch.float32, True
    else:
        harness.require_gpu("bench_int4")
    roof = harness.peaks()  # the lease's probe (or measured now); None on a CPU without a probe
    copy_gbs = roof.gbs if roof else harness.measured_copy_gbs(1 << 20)
    peak = roof.tflops if roof else None

    from xlmrxl_kernels.int4 import int4_matmul, quantize_int4

    dev = _RUN["device"]
    rows = harness.LiveRows("int4_tiny_cpu" if args.tiny else "int4", args.out)  # written after every row
    for K, N in shapes:
        w = torch.randn(N, K, device=dev, dtype=dtype) * 0.02
        q, s, z = quantize_int4(w, GROUP)
        tiny, tiny_note = (None, "skipped") if args.no_torchao else _tinygemm(q, s, z)
        for M in tokens:
            x = torch.randn(M, K, device=dev, dtype=dtype)
            nbytes = q.numel() + 2 * s.numel() * s.element_size() + (M * K + M * N) * x.element_size()
            flops = 2.0 * M * N * K
            fl = M <= 128
            cost = roofline.int4_linear(M, K, N, group=GROUP, dtype_bytes=x.element_size(), bias=False)
            t_ours, note = _time(lambda: int4_matmul(x, q, s, z, GROUP), fl)
            t_bf16, _ = _time(lambda: F.linear(x, w), fl)
            t_tiny, tnote = (None, tiny_note) if tiny is None else _time(lambda: tiny(x), fl)
            gbs = None if t_ours is None else nbytes / (t_ours * 1e-3) / 1e9
            tflops = None if t_ours is None else flops / (t_ours * 1e-3) / 1e12
            rows.append(
                {
                    "K": K,
                    "N": N,
                    "M": M,
                    "l2": ("flushed" if fl else "warm") if torch.cuda.is_available() else "n/a (cpu)",
                    "pct_of_roofline": harness.pct_of_roofline(t_ours, cost, roof),
                    "x_vs_bf16": None if None in (t_ours, t_bf16) else t_bf16 / t_ours,
                    "x_vs_tinygemm": None if None in (t_ours, t_tiny) else t_tiny / t_ours,
                    "ours_GBps": gbs,
                    "pct_of_copy": None if gbs is None else 100 * gbs / copy_gbs,
                    "ours_TFLOPs": tflops,
                    "pct_of_peak": None if peak is None or tflops is None else 100 * tflops / peak,
                    "ours_ms": t_ours,
                    "bf16_ms": t_bf16,
                    "tinygemm_ms": t_tiny,
                    "note": "; ".join(n for n in (note, tnote) if n),
                }
            )
            del x
        del w, q, s, z, tiny
    cols = [
        "K",
        "N",
        "M",
        "l2",
        "pct_of_roofline",
        "x_vs_bf16",
        "x_vs_tinygemm",
        "ours_GBps",
        "pct_of_copy",
        "ours_TFLOPs",
        "pct_of_peak",
        "ours_ms",
        "bf16_ms",
        "tinygemm_ms",
        "note",
    ]
    name = "int4_tiny_cpu" if args.tiny else "int4"
    out = harness.write_results(
        name, rows, columns=cols, extra={"copy_GBps": copy_gbs, "peak_bf16_TFLOPs": peak}, out_dir=args.out
    )
    print(f"int4: copy bandwidth {copy_gbs:.0f} GB/s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
