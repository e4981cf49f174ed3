"""Attention at XLM-RoBERTa-XL / XXL shapes: xlmrxl's Triton kernels vs PyTorch SDPA backends, in TFLOP/s.

Prefill: B 32, S 512, H 32, head dim 80 (XL) and 128 (XXL), lengths uniform in [0.2, 1.0] x S (mean 0.6: 40 %
padding, right-padded, seed 0). FLOPs are counted on real tokens only, non-causal: 4 x D x H x sum_b L_b^2
(q kᵀ and p v, 2 FLOPs per multiply-add). Every contender gets the same real-token FLOP count, so TFLOP/s compare
time directly; padded contenders pay for the padding in that number, which is the point.

Contenders:
- ``xlmrxl-padded``: ``attention(q, k, v, mask)`` on the padded (B, H, S, D) tensors with the key padding mask.
- ``xlmrxl-varlen``: ``attention_varlen`` on the packed real tokens (what the padding-free encoder calls).
- ``sdpa-flash-njt``: SDPA (flash backend) on nested jagged tensors over the same packed tokens: the fair flash peer,
  since flash cannot take a padding mask. ``sdpa-flash-nomask``: flash on the padded tensors *without* the mask
  (wrong numbers at padded keys, more work: shown as a bound only).
- ``sdpa-efficient`` / ``sdpa-cudnn`` / ``sdpa-math``: SDPA with the bool padding mask, each backend forced.
A contender whose backend rejects the input is listed with the error in ``note``.

Decode: S_q 1, S_k 512, H 32, D 80, B 1 and 32, with a padding mask (ours, efficient, cuDNN) and without (flash):
median microseconds and GB/s of K and V read (decode is memory-bound; L2 is evicted before every timed decode call,
since one sequence's K and V fit in L2).

``pct_of_roofline``: the contender's time against the op's floor (``benchmarks.roofline.attention`` on real tokens,
``decode_attention``) on the peaks the lease's probe measured.

``--tiny`` runs tiny shapes on CPU with the Triton interpreter (to check the script itself; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import harness, roofline

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_RUN = {"device": "cuda", "warmup": 10, "rep": 50}  # --tiny: CPU, 1 + 2 calls
_ROOF: dict = {"peak": None}  # roofline.Peak of this device (the lease's probe), set by main


def _sync():
    if _RUN["device"] == "cuda":
        torch.cuda.synchronize()


def _time(fn, flush_l2: bool = False):
    try:
        fn()  # compile / fail early outside the timer
        _sync()
        return harness.bench(fn, warmup=_RUN["warmup"], rep=_RUN["rep"], flush_l2=flush_l2)["ms"], ""
    except Exception as exc:  # a backend that rejects the input is reported, not fatal
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__


def _sdpa_backend(name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, name, None)
    if backend is None:
        return None
    return lambda: sdpa_kernel(backend)


def _sdpa(backend_name, q, k, v, mask=None):
    ctx = _sdpa_backend(backend_name)
    if ctx is None:
        raise RuntimeError(f"this torch has no SDPBackend.{backend_name}")

    def run():
        with ctx():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return run


def _lengths(B, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.empty(B).uniform_(0.2, 1.0, generator=g) * S).long().clamp(min=1)


def prefill_rows(dtype, dname, D, B=32, S=512, H=32, quick=False):
    from xlmrxl_kernels.flash import attention, attention_varlen

    lens = _lengths(B, S)
    dev = _RUN["device"]
    mask = (torch.arange(S)[None, :] < lens[:, None]).to(dev)
    q, k, v = (torch.randn(B, H, S, D, device=dev, dtype=dtype) for _ in range(3))
    cu = torch.zeros(B + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    cu = cu.to(dev)
    packed = [t.transpose(1, 2)[mask].contiguous() for t in (q, k, v)]  # (T, H, D)
    max_len = int(lens.max())
    flops = 4.0 * D * H * float((lens.double() ** 2).sum())
    cost = roofline.attention(lens.tolist(), H, D, dtype_bytes=q.element_size())
    contenders = {
        "xlmrxl-padded": lambda: attention(q, k, v, mask),
        "xlmrxl-varlen": lambda: attention_varlen(*packed, cu, cu, max_len, max_len),
    }
    try:
        offsets = cu.long()
        njt = [torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in packed]
        contenders["sdpa-flash-njt"] = _sdpa("FLASH_ATTENTION", *njt)
    except Exception as exc:
        contenders["sdpa-flash-njt"] = exc
    contenders["sdpa-flash-nomask"] = _sdpa("FLASH_ATTENTION", q, k, v)
    bmask = mask[:, None, None, :]
    contenders["sdpa-efficient"] = _sdpa("EFFICIENT_ATTENTION", q, k, v, bmask)
    contenders["sdpa-cudnn"] = _sdpa("CUDNN_ATTENTION", q, k, v, bmask)
    if not quick:
        contenders["sdpa-math"] = _sdpa("MATH", q, k, v, bmask)
    rows, times = [], {}
    for name, fn in contenders.items():
        if isinstance(fn, Exception):
            t, note = None, f"{type(fn).__name__}: {str(fn).splitlines()[0][:120]}"
        else:
            t, note = _time(fn)
        times[name] = t
        rows.append(
            {
                "mode": "prefill",
                "dtype": dname,
                "B": B,
                "S": S,
                "H": H,
                "D": D,
                "real_tokens": int(lens.sum()),
                "contender": name,
                "ms": t,
                "TFLOPs": None if t is None else flops / (t * 1e-3) / 1e12,
                "pct_of_roofline": harness.pct_of_roofline(t, cost, _ROOF["peak"]),
                "note": note,
            }
        )
    flash = times.get("sdpa-flash-njt")
    for r in rows:
        r["x_vs_flash_njt"] = None if None in (r["ms"], flash) else flash / r["ms"]
    return rows


def decode_rows(dtype, dname, B, D=80, S_k=512, H=32):
    from xlmrxl_kernels.flash import attention

    dev = _RUN["device"]
    q = torch.randn(B, H, 1, D, device=dev, dtype=dtype)
    k, v = (torch.randn(B, H, S_k, D, device=dev, dtype=dtype) for _ in range(2))
    mask = torch.ones(B, S_k, dtype=torch.bool, device=dev)
    mask[:, : S_k // 10] = False  # some left padding so the mask does work
    nbytes = 2 * B * H * S_k * D * q.element_size()
    cost = roofline.decode_attention(B, S_k, H, D, dtype_bytes=q.element_size())
    contenders = {
        "xlmrxl-mask": lambda: attention(q, k, v, mask),
        "xlmrxl-nomask": lambda: attention(q, k, v),
        "sdpa-flash-nomask": _sdpa("FLASH_ATTENTION", q, k, v),
        "sdpa-efficient-mask": _sdpa("EFFICIENT_ATTENTION", q, k, v, mask[:, None, None, :]),
        "sdpa-cudnn-mask": _sdpa("CUDNN_ATTENTION", q, k, v, mask[:, None, None, :]),
    }
    rows = []
    for name, fn in contenders.items():
        t, note = _time(fn, flush_l2=True)
        rows.append(
            {
                "mode": "decode",
                "dtype": dname,
                "B": B,
                "S": S_k,
                "H": H,
                "D": D,
                "real_tokens": B,
                "contender": name,
                "ms": t,
                "us": None if t is None else t * 1e3,
                "KV_GBps": None if t is None else nbytes / (t * 1e-3) / 1e9,
                "pct_of_roofline": harness.pct_of_roofline(t, cost, _ROOF["peak"]),
                "note": note,
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="bf16 only, no SDPA math backend")
    p.add_argument(
        "--dtypes", nargs="*", default=None, choices=list(DTYPES), help="default: fp16 bf16 (bf16 with --quick)"
    )
    p.add_argument("--head-dims", nargs="*", type=int, default=[80, 128])
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<gpu>)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET (script check)")
    args = p.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is first imported
        _RUN.update(device="cpu", warmup=0, rep=2)
        sizes = dict(B=2, S=24, H=2)
        decode_sizes = dict(S_k=40, H=2)
        batches = (1, 2)
    else:
        harness.require_gpu("bench_attention")
        sizes, decode_sizes, batches = {}, {}, (1, 32)

    _ROOF["peak"] = harness.peaks()
    dnames = args.dtypes or (["bf16"] if args.quick else ["fp16", "bf16"])
    if args.tiny:
        dnames = ["fp32"]
    rows = harness.LiveRows("attention_tiny_cpu" if args.tiny else "attention", args.out)  # written after every row
    for dname in dnames:
        dtype = DTYPES[dname]
        for D in args.head_dims:
            rows += prefill_rows(dtype, dname, D, quick=args.quick or args.tiny, **sizes)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for B in batches:
            rows += decode_rows(dtype, dname, B, **decode_sizes)
    cols = [
        "mode",
        "dtype",
        "B",
        "S",
        "H",
        "D",
        "real_tokens",
        "contender",
        "ms",
        "TFLOPs",
        "pct_of_roofline",
        "x_vs_flash_njt",
        "us",
        "KV_GBps",
        "note",
    ]
    name = "attention_tiny_cpu" if args.tiny else "attention"
    out = harness.write_results(name, rows, columns=cols, out_dir=args.out)
    print(f"attention: results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
