"""End-to-end benchmark at the XLM-RoBERTa-XL configuration (random weights, bf16), peers in the same run.

Batches (real tokens only are counted):
  (a) `full`   batch 32 x 512, no padding
  (b) `mixed`  batch 32, lengths drawn uniformly from [0.2, 1.0] x 512 (right padding, seed 0)
  (c) `single` one sequence of 128 tokens (latency)

Peers: transformers' XLMRobertaXLModel with attn_implementation "eager" and "sdpa", `torch.compile` of the SDPA
model, the same transformers object after `xlmrxl.accelerate`, and xlmrxl's own model (sharing the same weights
through `xlmrxl.from_transformers`), in bf16 and int4 (`xlmrxl.quantize`, group 128).
Reported: median ms, tokens/s on real tokens, ratio to HF SDPA, the fraction of the bf16 GEMM peak measured in the
same run (FLOPs counted on real tokens: 2 x linear params per token + attention 4 x S x hidden per token per layer),
peak GPU memory, ``pct_of_roofline`` (the forward's floor, ``benchmarks.roofline.forward_floor_s``: every op at its own
limit on the peaks the lease's probe measured, real tokens only, divided by the measured time), ``first_call_s``
(the first call: compiles and tunes included) and, on transformers rows, the transformers version that ran.

`--tiny` runs a tiny configuration on CPU in fp32 (to check the script itself; numbers mean nothing).
`--peers` picks peers by name (default: all, less the slow ones under `--quick`); results are rewritten after every
measured row, so a run killed by a timeout keeps what it measured. The XL model is built with random weights
directly on the GPU in bf16 (no CPU initialisation of 3.5B parameters).
"""

from __future__ import annotations

import argparse
import gc
import logging
import time

import torch

from benchmarks import harness, roofline
from xlmrxl.tiny import tiny_shape

XL = dict(
    vocab_size=250880,
    hidden_size=2560,
    num_hidden_layers=36,
    num_attention_heads=32,
    intermediate_size=10240,
    max_position_embeddings=514,
    type_vocab_size=1,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
PEERS = ["hf-eager", "hf-sdpa", "hf-sdpa-compile", "xlmrxl", "hf+xlmrxl.accelerate", "xlmrxl-int4"]
TINY = dict(XL, vocab_size=1000, **tiny_shape(num_hidden_layers=2, intermediate_size=128))


def make_batch(kind: str, vocab: int, device, seed: int = 0, seq: int = 512, batch: int = 32):
    g = torch.Generator().manual_seed(seed)
    if kind == "single":
        lengths = torch.tensor([128])
    elif kind == "full":
        lengths = torch.full((batch,), seq)
    elif kind == "mixed":
        lengths = (torch.empty(batch).uniform_(0.2, 1.0, generator=g) * seq).long().clamp(min=2)
    else:
        raise ValueError(kind)
    S = int(lengths.max())
    ids = torch.randint(3, vocab, (len(lengths), S), generator=g)
    mask = (torch.arange(S)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(len(lengths)), lengths - 1] = 2
    ids = ids.masked_fill(mask == 0, 1)
    return ids.to(device), mask.to(device), int(lengths.sum())


def flops_per_forward(cfg: dict, mask: torch.Tensor) -> float:
    H, L, I = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    lengths = mask.sum(1).double()
    linear = 2 * L * (4 * H * H + 2 * H * I) * lengths.sum()
    attention = L * 4 * H * (lengths**2).sum()  # QK^T and PV, real tokens only
    return float(linear + attention)


def build_hf(cfg: dict, dtype, device, attn: str):
    from transformers import XLMRobertaXLConfig, XLMRobertaXLModel

    config = XLMRobertaXLConfig(**cfg)
    config._attn_implementation = attn
    with harness.default_dtype(dtype), torch.device(device):
        model = XLMRobertaXLModel(config, add_pooling_layer=False)
    return model.eval()


def set_attn(model, attn: str):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attn)
    else:
        model.config._attn_implementation = attn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config on CPU, fp32 (checks the script only)")
    p.add_argument("--quick", action="store_true", help="skip torch.compile and eager (the slowest peers)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-int4", action="store_true")
    p.add_argument("--batches", nargs="*", default=["full", "mixed", "single"])
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results/<device>)")
    p.add_argument("--peers", nargs="*", default=None, choices=PEERS, help="run only these peers")
    p.add_argument("--name", default=None, help="results file name (default e2e, or e2e_tiny_cpu with --tiny)")
    args = p.parse_args(argv)
    peers = set(args.peers) if args.peers is not None else set(PEERS)
    if args.peers is None and args.quick:
        peers -= {"hf-eager", "hf-sdpa-compile"}
    if args.no_compile or args.tiny:
        peers.discard("hf-sdpa-compile")
    if args.no_int4:
        peers.discard("xlmrxl-int4")
    name = args.name or ("e2e_tiny_cpu" if args.tiny else "e2e")
    reps = dict(warmup=2, rep=5) if args.tiny else (dict(warmup=2, rep=10) if args.quick else dict(warmup=5, rep=20))
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import xlmrxl

    if args.tiny:
        cfg, dtype, device = TINY, torch.float32, "cpu"
    else:
        harness.require_gpu("bench_e2e")
        cfg, dtype, device = XL, torch.bfloat16, "cuda"
    roof = harness.peaks()  # the lease's probe (or measured now); None on a CPU without a probe
    peak_tflops = roof.tflops if roof else float("nan")
    from importlib import metadata

    hf_version = metadata.version("transformers")

    t_build = time.perf_counter()
    hf = build_hf(cfg, dtype, device, "sdpa")
    print(f"model built in {time.perf_counter() - t_build:.1f} s", flush=True)
    batches = {
        k: make_batch(k, cfg["vocab_size"], device, seq=512 if not args.tiny else 32, batch=32 if not args.tiny else 4)
        for k in args.batches
    }
    if args.tiny and "single" in batches:
        batches["single"] = make_batch("full", cfg["vocab_size"], device, seq=16, batch=1)

    bytes_per = torch.finfo(dtype).bits // 8
    rows = []
    cols = ["batch", "peer", "ms", "tokens_per_s", "speedup_vs_hf_sdpa", "pct_of_roofline", "tflops_real", "frac_peak"]
    cols += ["peak_mem_gib", "first_call_s", "transformers"]

    def write():
        # ratios against HF SDPA of the same batch; rewritten after every row (a killed run keeps its numbers)
        base = {r["batch"]: r["ms"] for r in rows if r["peer"] == "hf-sdpa"}
        for r in rows:
            r["speedup_vs_hf_sdpa"] = base[r["batch"]] / r["ms"] if r["batch"] in base else None
        extra = {"config": cfg, "dtype": str(dtype), "peak_tflops_measured": peak_tflops}
        return harness.write_results(name, rows, columns=cols, extra=extra, out_dir=args.out)

    def run(peer: str, fn, kind: str):
        ids, mask, real = batches[kind]
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            t0 = time.perf_counter()
            fn(ids, mask)  # warm-up / compile
            if device == "cuda":
                torch.cuda.synchronize()
            first = time.perf_counter() - t0
            t = harness.bench(lambda: fn(ids, mask), **reps)
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        tflops = flops_per_forward(cfg, mask) / (t["ms"] * 1e-3) / 1e12
        rows.append(
            {
                "batch": kind,
                "peer": peer,
                "ms": t["ms"],
                "ms_p20": t["ms_p20"],
                "ms_p80": t["ms_p80"],
                "real_tokens": real,
                "tokens_per_s": real / (t["ms"] * 1e-3),
                "tflops_real": tflops,
                "frac_peak": tflops / peak_tflops if peak_tflops == peak_tflops else None,
                "pct_of_roofline": None
                if roof is None
                else harness.pct_of_roofline(
                    t["ms"], roofline.forward_floor_s(cfg, mask.sum(1).tolist(), roof, dtype_bytes=bytes_per), None
                ),
                "peak_mem_gib": peak_mem,
                "first_call_s": first,
                "transformers": hf_version if peer.startswith("hf") else "",
            }
        )
        print(f"{kind:>6} {peer:<22} {t['ms']:9.3f} ms  {real / (t['ms'] * 1e-3):12.0f} tok/s", flush=True)
        write()

    def hf_call(model):
        return lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state

    for kind in batches:
        if "hf-eager" in peers:
            set_attn(hf, "eager")
            run("hf-eager", hf_call(hf), kind)
        set_attn(hf, "sdpa")
        if "hf-sdpa" in peers:
            run("hf-sdpa", hf_call(hf), kind)
    if "hf-sdpa-compile" in peers:
        compiled = torch.compile(hf)
        for kind in batches:
            run("hf-sdpa-compile", hf_call(compiled), kind)
        del compiled
        torch._dynamo.reset()

    ours = xlmrxl.from_transformers(hf)  # shares hf's parameters
    if "xlmrxl" in peers:
        for kind in batches:
            run("xlmrxl", hf_call(ours), kind)

    if "hf+xlmrxl.accelerate" in peers:
        xlmrxl.accelerate(hf)
        for kind in batches:
            run("hf+xlmrxl.accelerate", hf_call(hf), kind)

    if "xlmrxl-int4" in peers and cfg["hidden_size"] % 128 == 0:  # int4 groups of 128 along K
        del hf
        gc.collect()
        xlmrxl.quantize(ours, group_size=128)
        if device == "cuda":
            torch.cuda.empty_cache()
        for kind in batches:
            run("xlmrxl-int4", hf_call(ours), kind)

    out = write()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
