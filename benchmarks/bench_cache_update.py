"""KV-cache append: xlmrxl's compiled ``cache_update`` (one launch for K and V) vs slice assignment and ``index_copy_``.

Bytes moved per call (the minimum): read the new K and V and write them into the caches,
2 (K, V) x 2 (read + write) x B x H x T x D x element size. GB/s = bytes / median time; the ceiling is the
device-to-device copy bandwidth measured in the same run (``harness.copy_bandwidth_gbs``).

Peers, all writing the same slots of (B, H, max_len, D) caches from (B, H, T, D) new states laid out as a model
produces them ((B, T, H, D) transposed): ``k_cache[:, :, p:p+T] = k_new`` and the same for V (two copy kernels;
one start for the whole batch), ``index_copy_`` along the sequence dim (two kernels), and xlmrxl's op with
per-sequence positions read on the device. Shapes: XL (H 32, D 80) and XXL (H 32, D 128), bf16, 1 to 16k new
tokens at batch 1, and 1 new token at batch 32 (a decode step). Small writes also report the latency of our op
replayed inside a CUDA graph (launch overhead removed; it also shows the op is capture-safe).
Targets (shared/docs/performance-targets.md): >= 80 % of copy bandwidth at >= 16k tokens; <= 10 us for <= 64.

``--tiny`` runs tiny shapes on CPU (the CPU op; to check the script itself).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks import harness, roofline

MODELS = {"XL": (32, 80), "XXL": (32, 128)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_RUN = {"device": "cuda", "warmup": 10, "rep": 50}


def _time(fn):
    return harness.try_bench(fn, warmup=_RUN["warmup"], rep=_RUN["rep"])


def _graph_ms(fn):
    """Median time of ``fn`` replayed from a CUDA graph (None on CPU)."""
    if _RUN["device"] != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _time(graph.replay)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer token counts (1, 64, 1024, 16384)")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<gpu>)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (script check; numbers mean nothing)")
    args = p.parse_args(argv)

    from xlmrxl_kernels.kv_cache import cache_extension_unavailable_reason, cache_update

    if args.tiny:
        _RUN.update(device="cpu", warmup=0, rep=2)
        cases = [(1, 1), (1, 16), (2, 1)]
    else:
        harness.require_gpu("bench_cache_update")
        tokens = [1, 64, 1024, 16384] if args.quick else [1, 16, 64, 256, 1024, 4096, 16384]
        cases = [(1, t) for t in tokens] + [(32, 1)]
    roof = harness.peaks()  # the lease's probe (or measured now); None on a CPU without a probe
    copy_gbs = roof.gbs if roof else harness.measured_copy_gbs(1 << 20)
    dev = _RUN["device"]
    reason = cache_extension_unavailable_reason(torch.device(dev))
    if reason is not None:
        print(f"bench_cache_update: the compiled op is not available ({reason}); timing the PyTorch fallback")
    dtype = DTYPES[args.dtype]
    rows = harness.LiveRows(
        "cache_update_tiny_cpu" if args.tiny else "cache_update", args.out
    )  # written after every row
    for model in args.models:
        H, D = MODELS[model] if not args.tiny else (4, MODELS[model][1])
        for B, T in cases:
            past = 512 if not args.tiny else 8  # tokens already cached: writes land mid-buffer
            L = past + T
            k_cache = torch.randn(B, H, L, D, device=dev, dtype=dtype)
            v_cache = torch.randn(B, H, L, D, device=dev, dtype=dtype)
            k_new = torch.randn(B, T, H, D, device=dev, dtype=dtype).transpose(1, 2)  # as the model's views
            v_new = torch.randn(B, T, H, D, device=dev, dtype=dtype).transpose(1, 2)
            positions = torch.full((B,), past, device=dev, dtype=torch.int64)
            idx = torch.arange(past, past + T, device=dev)

            def ours():
                cache_update(k_cache, v_cache, k_new, v_new, positions)

            def slices():
                k_cache[:, :, past : past + T] = k_new
                v_cache[:, :, past : past + T] = v_new

            def index_copy():
                k_cache.index_copy_(2, idx, k_new)
                v_cache.index_copy_(2, idx, v_new)

            ours()
            want = k_cache[:, :, past : past + T].clone()
            slices()
            assert torch.equal(want, k_cache[:, :, past : past + T]), "cache_update wrote other values than slicing"
            nbytes = 2 * 2 * B * H * T * D * k_cache.element_size()
            cost = roofline.cache_update(B * T, H, D, dtype_bytes=k_cache.element_size())
            t_ours, err = _time(ours)
            t_slice, _ = _time(slices)
            t_index, _ = _time(index_copy)
            t_graph = _graph_ms(ours) if T <= 64 else None
            gbs = lambda t: None if t is None else nbytes / (t * 1e-3) / 1e9  # noqa: E731
            rows.append(
                {
                    "model": model,
                    "B": B,
                    "H": H,
                    "D": D,
                    "new_tokens": T,
                    "dtype": args.dtype,
                    "xlmrxl_us": None if t_ours is None else 1e3 * t_ours,
                    "graph_us": None if t_graph is None else 1e3 * t_graph,
                    "slice_us": None if t_slice is None else 1e3 * t_slice,
                    "index_copy_us": None if t_index is None else 1e3 * t_index,
                    "xlmrxl_GBps": gbs(t_ours),
                    "pct_of_copy": None if t_ours is None else 100 * gbs(t_ours) / copy_gbs,
                    "pct_of_roofline": harness.pct_of_roofline(t_ours, cost, roof),
                    "slice_GBps": gbs(t_slice),
                    "index_copy_GBps": gbs(t_index),
                    "x_vs_slice": None if None in (t_ours, t_slice) else t_slice / t_ours,
                    "x_vs_index_copy": None if None in (t_ours, t_index) else t_index / t_ours,
                    "note": err or ("" if reason is None else "PyTorch fallback"),
                }
            )
            print(
                f"{model} B={B:>2} T={T:>5}: ours {rows[-1]['xlmrxl_us']:.1f} us, "
                f"slices {rows[-1]['slice_us']:.1f} us, index_copy {rows[-1]['index_copy_us']:.1f} us",
                flush=True,
            )
            del k_cache, v_cache, k_new, v_new
    cols = [
        "model",
        "B",
        "new_tokens",
        "H",
        "D",
        "dtype",
        "xlmrxl_GBps",
        "pct_of_copy",
        "pct_of_roofline",
        "slice_GBps",
        "index_copy_GBps",
        "x_vs_slice",
        "x_vs_index_copy",
        "xlmrxl_us",
        "graph_us",
        "slice_us",
        "index_copy_us",
        "note",
    ]
    name = "cache_update_tiny_cpu" if args.tiny else "cache_update"
    out = harness.write_results(name, rows, columns=cols, extra={"copy_GBps": copy_gbs}, out_dir=args.out)
    print(f"cache_update: copy bandwidth {copy_gbs:.0f} GB/s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
