"""CPU forward benchmark: xlmrxl's reference backend (the padding-free fast path with the PyTorch
reference ops) against transformers 4.56.2 (SDPA, its default) on the same weights.

Model: hidden 512, 4 layers, 8 heads, intermediate 2048 (fp32, eval, inference_mode, one thread by default).
Batches of 8 x 128:
``mixed`` (half the rows padded to half length: 75 % real tokens) and ``full`` (no padding). Peers: transformers SDPA,
xlmrxl's own model (``backend="reference"``), and the same transformers object after ``xlmrxl.accelerate``.
Rows: median / p20 / p80 wall-clock ms over ``--rep`` runs after ``--warmup`` (peers interleaved round-robin, so
load from other processes hits all alike), real tokens per second, and the
speedup against transformers in the same run. Written with ``benchmarks.harness.write_results`` as
``cpu_forward.{json,md}`` under ``benchmarks/results/<device>/`` (or ``--out``).

    python -m benchmarks.bench_cpu_forward [--rep 30] [--threads N] [--quick] [--tiny] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from xlmrxl.tiny import tiny_shape

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import harness
else:
    from . import harness

CONFIG = dict(
    vocab_size=1000,
    hidden_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    intermediate_size=2048,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


TINY = dict(CONFIG, **tiny_shape(num_hidden_layers=2, intermediate_size=128))


def make_batch(kind: str, batch: int = 8, seq: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, CONFIG["vocab_size"], (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if kind == "mixed":
        mask[batch // 2 :, seq // 2 :] = 0  # half the rows padded to half length
    elif kind != "full":
        raise ValueError(f"unknown batch kind {kind!r}; use 'mixed' or 'full'")
    ids[mask == 0] = CONFIG["pad_token_id"]
    return ids, mask


def build_models(config=None):
    """transformers SDPA, xlmrxl's model and an accelerated transformers model, all sharing one set of weights."""
    import transformers

    import xlmrxl
    from xlmrxl import from_transformers, to_transformers

    torch.manual_seed(0)
    cfg = transformers.XLMRobertaXLConfig(**(config or CONFIG))
    cfg._attn_implementation = "sdpa"
    hf = transformers.XLMRobertaXLModel(cfg, add_pooling_layer=False).eval()
    ours = from_transformers(hf, backend="reference").eval()
    accelerated = xlmrxl.accelerate(to_transformers(ours).eval(), backend="reference")
    return {"transformers-sdpa": hf, "xlmrxl-reference": ours, "transformers+accelerate": accelerated}


def interleaved(fns: dict, *, warmup: int, rep: int) -> dict:
    """Median / p20 / p80 ms per function, the functions run round-robin (rotating the order each round) so that
    load from other processes on a shared CPU hits every peer alike."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for i in range(rep):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for n, ts in times.items():
        ts.sort()
        out[n] = {"ms": statistics.median(ts), "ms_p20": ts[len(ts) // 5], "ms_p80": ts[(4 * len(ts)) // 5]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_cpu_forward", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rep", type=int, default=30, help="timed runs per row (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: stable numbers on a shared CPU; 0 = torch's choice)",
    )
    ap.add_argument("--quick", action="store_true", help="3 reps, 1 warm-up (a smoke run)")
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, 8 x 16 tokens (a CI smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rep, args.warmup = 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    config, seq = (TINY, 16) if args.tiny else (CONFIG, 128)
    models = build_models(config)
    rows = []
    for kind in ("mixed", "full"):
        ids, mask = make_batch(kind, seq=seq)
        real = int(mask.sum())
        with torch.inference_mode():
            ref = models["transformers-sdpa"](ids, attention_mask=mask).last_hidden_state
            errs = {
                n: (ref - m(ids, attention_mask=mask).last_hidden_state)[mask.bool()].abs().max().item()
                for n, m in models.items()
            }

        def caller(model):
            def call():
                with torch.inference_mode():
                    model(ids, attention_mask=mask)

            return call

        times = interleaved({n: caller(m) for n, m in models.items()}, warmup=args.warmup, rep=args.rep)
        base = times["transformers-sdpa"]["ms"]
        for name, t in times.items():
            rows.append(
                {
                    "batch": f"{kind} 8x{seq}",
                    "real_tokens": real,
                    "peer": name,
                    "ms": t["ms"],
                    "ms_p20": t["ms_p20"],
                    "ms_p80": t["ms_p80"],
                    "tokens_per_s": real / (t["ms"] * 1e-3),
                    "speedup_vs_transformers": base / t["ms"],
                    "max_err_vs_transformers": errs[name],
                }
            )
    cols = [
        "batch",
        "real_tokens",
        "peer",
        "ms",
        "ms_p20",
        "ms_p80",
        "tokens_per_s",
        "speedup_vs_transformers",
        "max_err_vs_transformers",
    ]
    out = harness.write_results(
        "cpu_forward_tiny" if args.tiny else "cpu_forward",
        rows,
        columns=cols,
        out_dir=args.out,
        extra={"config": config, "dtype": "float32", "threads": torch.get_num_threads(), "rep": args.rep},
    )
    for r in rows:
        print(f"{r['batch']:>12}  {r['peer']:<24} {r['ms']:8.2f} ms  x{r['speedup_vs_transformers']:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
