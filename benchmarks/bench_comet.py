"""COMET benchmark: segments per second of ``metric.predict`` with and without ``xlmrxl.accelerate``, on
the same model object and the same data, with the scores compared.

Models (random weights, COMET's own heads, built offline by ``benchmarks.clients_models``):
``xcomet-xl`` (XCOMETMetric on an XLM-RoBERTa-XL-shaped encoder: hidden 2560, 36 layers; sparsemax layer mix,
word-level error spans, three passes per segment: mt+src, mt+ref, mt+src+ref) and ``cometkiwi-xl`` (UnifiedMetric,
CometKiwi-XL-shaped: mt+src, sparsemax layer mix). Data: WMT-like segments, source / hypothesis / reference of 5-120
words each (uniform), from the shipped multilingual corpus. Peers, interleaved round-robin: ``comet`` (unbabel-comet's
own code on transformers) and ``comet+xlmrxl`` (after ``xlmrxl.accelerate``: packed layer stack, layer mix on packed
tokens). Rows: median seconds per ``predict`` over ``--rep`` runs, segments/s, speed-up vs comet, max |score
difference| vs comet, and (GPU) peak memory. bf16 on a GPU; ``--tiny``: a toy shape (hidden 64, 3 layers) on CPU in
fp32, which exercises the whole path (what CI runs; numbers say nothing about XL on a GPU).

Needs unbabel-comet (the ``.venv-clients`` environment of ``make test-clients``); without it, says so and exits 0.

    python -m benchmarks.bench_comet [--tiny] [--quick] [--segments N] [--batch-size B] [--rep R] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import clients_models, harness
else:
    from . import clients_models, harness

MODELS = {"xcomet-xl": ("xcomet", {}), "cometkiwi-xl": ("kiwi", {"layer_norm": False})}


def _missing() -> str | None:
    try:
        import comet  # noqa: F401
    except ImportError as exc:
        return f"unbabel-comet is not installed ({exc}); run it in .venv-clients (make test-clients builds it)"
    return None


def _skip(name: str, reason: str, out) -> int:
    print(f"{name}: skipped: {reason}")
    if out is not None:  # an explicit output directory always gets a record of the run
        harness.write_results(name, [], extra={"skipped": reason}, out_dir=Path(out))
    return 0


def _build(kind: str, overrides: dict, tiny: bool, dtype, device, root: Path):
    shape = clients_models.TINY if tiny else clients_models.XL
    enc = clients_models.encoder_dir(root / ("tiny" if tiny else "xl"), shape, weights=tiny)
    with harness.default_dtype(dtype if not tiny else torch.float32):
        model = clients_models.comet_model(kind, enc, weights=tiny, **overrides)
    return model.to(device=device, dtype=dtype)


def run_model(name: str, args, dtype, device, root: Path) -> list[dict]:
    import xlmrxl

    kind, overrides = MODELS[name]
    model = _build(kind, overrides, args.tiny, dtype, device, root)
    data = clients_models.wmt_samples(args.segments, 5, 120, seed=1, ref=kind != "kiwi")
    gpus = 1 if device.type == "cuda" else 0

    def predict():
        return model.predict(data, batch_size=args.batch_size, gpus=gpus, progress_bar=False)

    peers = {"comet": xlmrxl.deaccelerate, "comet+xlmrxl": xlmrxl.accelerate}
    scores, times, peak = {}, {p: [] for p in peers}, {}
    for switch in peers.values():  # warm-up (q/k/v fusion, allocator, Lightning's first trainer)
        switch(model)
        predict()
    for _ in range(args.rep):
        for peer, switch in peers.items():
            switch(model)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = predict()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak[peer] = torch.cuda.max_memory_allocated() / 2**30
            times[peer].append(time.perf_counter() - t0)
            scores[peer] = out.scores
    xlmrxl.deaccelerate(model)
    base = statistics.median(times["comet"])
    rows = []
    for peer in peers:
        s = statistics.median(times[peer])
        rows.append(
            {
                "model": name + ("-tiny" if args.tiny else ""),
                "dtype": str(dtype).replace("torch.", ""),
                "segments": len(data),
                "batch_size": args.batch_size,
                "peer": peer,
                "s_per_predict": s,
                "segments_per_s": len(data) / s,
                "speedup_vs_comet": base / s,
                "max_score_diff_vs_comet": max(abs(a - b) for a, b in zip(scores[peer], scores["comet"])),
                "peak_gib": peak.get(peer),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy shape on CPU in fp32 (CI): exercises the code path only")
    p.add_argument("--quick", action="store_true", help="fewer segments and repetitions")
    p.add_argument("--segments", type=int, default=None, help="segments per predict (default 1024; tiny 48)")
    p.add_argument("--batch-size", type=int, default=16, help="COMET's predict batch size (default 16)")
    p.add_argument("--rep", type=int, default=None, help="timed predicts per peer (default 5; quick 2)")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS), help="which models")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results/<device>/)")
    args = p.parse_args(argv)
    name = "comet_tiny_cpu" if args.tiny else "comet"
    reason = _missing()
    if reason:
        return _skip(name, reason, args.out)
    if not args.tiny and not torch.cuda.is_available():
        return _skip(name, f"no CUDA GPU on this machine ({harness.device_name()}); use --tiny on CPU", args.out)
    args.segments = args.segments or (48 if args.tiny else (256 if args.quick else 1024))
    args.rep = args.rep or (2 if args.quick else 5)
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        torch.set_num_threads(1)  # steady numbers on a shared CPU
    rows = []
    with tempfile.TemporaryDirectory(prefix="xlmrxl-bench-comet-") as tmp:
        for model in args.models:
            rows += run_model(model, args, dtype, device, Path(tmp))
            for r in rows[-2:]:
                print(
                    f"{r['model']:>18} {r['peer']:>13}: {r['segments_per_s']:8.1f} segments/s "
                    f"({r['speedup_vs_comet']:.2f}x), max |score diff| {r['max_score_diff_vs_comet']:.2g}"
                )
    out = harness.write_results(name, rows, out_dir=Path(args.out) if args.out else None)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
