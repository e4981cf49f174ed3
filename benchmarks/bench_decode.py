"""Decode-step latency of the XLM-RoBERTa-XL decoder (causal LM, random weights, bf16) with a 512-token cache.

One step = one new token per row attending to 511 cached tokens (the longest context the model's 514 position
embeddings allow), LM head on that token only. Batch 1 (latency) and 32 (throughput: tokens/s = batch / step).
Peers in the same run, sharing one set of weights (``xlmrxl.from_transformers``), SDPA attention everywhere:
  - ``xlmrxl-static``   our model with ``xlmrxl.StaticCache`` (in-place writes by the compiled ``cache_update``)
  - ``xlmrxl-dynamic``  our model with ``xlmrxl.DynamicCache`` (torch.cat per step, like transformers')
  - ``hf-dynamic``      transformers' model with its own ``DynamicCache``
  - ``hf-static``       transformers' model with its own ``StaticCache`` (writes at ``cache_position``)
Between timed calls each cache is rewound to the 511-token prefix (dynamic: ``crop``; ours static: its host-side
length, so no zeroing kernel is timed; transformers' static: overwritten in place at ``cache_position``).
Position ids are passed explicitly (the padding-index rule: 513 for the new token) to every peer.

``pct_of_roofline``: the step's time against ``benchmarks.roofline.decode_step`` (every weight read once, the K/V
cache read, the new token written: memory-bound) on the probe's peaks; the LM head is not counted, so the figure is
a slight overestimate of how far from the floor a step is. ``transformers``: the version every hf-* row ran.

``--tiny`` runs a tiny configuration on CPU in fp32 (to check the script itself; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

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
    is_decoder=True,
)
TINY = dict(XL, vocab_size=1000, max_position_embeddings=34, **tiny_shape(num_hidden_layers=2, intermediate_size=128))


def _rewind_static(cache, length: int) -> None:
    """Forget the last step without zeroing anything (benchmark only: the slots are overwritten next call)."""
    cache._lengths = [min(n, length) for n in cache._lengths]


def _rewind_hf_static(cache, length: int) -> None:
    """transformers 5.x static layers count their own length (``cache_position`` is not used to write): put it
    back to ``length`` after a timed step. 4.x writes at ``cache_position``, so there is nothing to do."""
    for layer in getattr(cache, "layers", ()):
        n = getattr(layer, "cumulative_length", None)
        if torch.is_tensor(n):
            n.fill_(length)


def _hf_static_cache(transformers, config, batch, length, device, dtype):
    """transformers' StaticCache across versions (4.5x takes the batch size; 5.x allocates lazily)."""
    try:
        return transformers.StaticCache(
            config=config, max_batch_size=batch, max_cache_len=length, device=device, dtype=dtype
        )
    except TypeError:
        return transformers.StaticCache(config=config, max_cache_len=length)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    p.add_argument("--quick", action="store_true", help="fewer timed repetitions")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers peers")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<gpu>)")
    p.add_argument("--tiny", action="store_true", help="tiny config on CPU, fp32 (checks the script only)")
    args = p.parse_args(argv)

    import transformers

    import xlmrxl
    from xlmrxl_kernels.kv_cache import cache_extension_unavailable_reason

    if args.tiny:
        cfg, dtype, device, warmup, rep = TINY, torch.float32, "cpu", 1, 3
        args.batches = [1, 2]
    else:
        harness.require_gpu("bench_decode")
        cfg, dtype, device = XL, torch.bfloat16, "cuda"
        warmup, rep = (3, 10) if args.quick else (5, 30)
    ctx = cfg["max_position_embeddings"] - 3  # cached tokens; the new one takes the last position id
    hf_config = transformers.XLMRobertaXLConfig(**cfg)
    hf_config._attn_implementation = "sdpa"
    with harness.default_dtype(dtype), torch.device(device):
        hf = transformers.XLMRobertaXLForCausalLM(hf_config).eval()
    ours = xlmrxl.from_transformers(hf)
    ext = cache_extension_unavailable_reason(torch.device(device))

    roof = harness.peaks()  # the lease's probe (or measured now); None on a CPU without a probe
    rows = harness.LiveRows("decode_tiny_cpu" if args.tiny else "decode", args.out)  # written after every row
    for B in args.batches:
        g = torch.Generator().manual_seed(B)
        prompt = torch.randint(3, cfg["vocab_size"], (B, ctx), generator=g).to(device)
        token = torch.randint(3, cfg["vocab_size"], (B, 1), generator=g).to(device)
        mask = torch.ones(B, ctx + 1, dtype=torch.long, device=device)
        pos = torch.full((B, 1), ctx + 2, dtype=torch.long, device=device)  # pad_id + 1 + ctx real tokens

        def peer_xlmrxl(kind):
            cache = (
                xlmrxl.StaticCache(ours.config, B, ctx + 1, dtype=dtype, device=device)
                if kind == "static"
                else xlmrxl.DynamicCache()
            )
            ours(prompt, attention_mask=mask[:, :ctx], past_key_values=cache, use_cache=True, logits_to_keep=1)

            def step():
                ours(token, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
                if kind == "static":
                    _rewind_static(cache, ctx)
                else:
                    cache.crop(ctx)

            return step

        def peer_hf(kind):
            if kind == "static":
                cache = _hf_static_cache(transformers, hf_config, B, ctx + 1, device, dtype)
                hf(
                    prompt,
                    attention_mask=mask[:, :ctx],
                    past_key_values=cache,
                    use_cache=True,
                    cache_position=torch.arange(ctx, device=device),
                )
                cpos = torch.tensor([ctx], device=device)

                def step():
                    hf(
                        token,
                        attention_mask=mask,
                        position_ids=pos,
                        past_key_values=cache,
                        use_cache=True,
                        cache_position=cpos,
                    )
                    _rewind_hf_static(cache, ctx)

                return step
            cache = transformers.DynamicCache()
            hf(prompt, attention_mask=mask[:, :ctx], past_key_values=cache, use_cache=True)

            def step():
                hf(token, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
                cache.crop(-1)  # drop the step's token (a negative count: 5.x refuses a positive target length)

            return step

        peers = [("xlmrxl-static", lambda: peer_xlmrxl("static")), ("xlmrxl-dynamic", lambda: peer_xlmrxl("dynamic"))]
        if not args.no_hf:
            peers += [("hf-dynamic", lambda: peer_hf("dynamic")), ("hf-static", lambda: peer_hf("static"))]
        base = None
        for name, make in peers:
            note = ""
            try:
                with torch.inference_mode():
                    step = make()
                    t = harness.bench(step, warmup=warmup, rep=rep)
                ms = t["ms"]
            except Exception as exc:  # a peer that cannot run here is reported, not fatal
                ms, t = None, {}
                note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            if name == "xlmrxl-static" and ext is not None:
                note = note or "cache_update ran the PyTorch fallback"
            if name == "hf-dynamic":
                base = ms
            rows.append(
                {
                    "batch": B,
                    "cached_tokens": ctx,
                    "peer": name,
                    "ms": ms,
                    "ms_p20": t.get("ms_p20"),
                    "ms_p80": t.get("ms_p80"),
                    "tokens_per_s": None if ms is None else B / (ms * 1e-3),
                    "pct_of_roofline": harness.pct_of_roofline(
                        ms, roofline.decode_step(cfg, B, ctx, dtype_bytes=torch.finfo(dtype).bits // 8), roof
                    ),
                    "transformers": transformers.__version__ if name.startswith("hf") else "",
                    "note": note,
                }
            )
            print(f"B={B:>2} {name:<15} {'-' if ms is None else f'{ms:8.3f} ms'} {note}", flush=True)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        for r in rows:
            if r["batch"] == B:
                r["x_vs_hf_dynamic"] = None if None in (base, r["ms"]) else base / r["ms"]
    cols = ["batch", "cached_tokens", "peer", "ms", "ms_p20", "ms_p80", "tokens_per_s", "x_vs_hf_dynamic"]
    cols += ["pct_of_roofline", "transformers", "note"]
    name = "decode_tiny_cpu" if args.tiny else "decode"
    out = harness.write_results(name, rows, columns=cols, out_dir=args.out)
    print(f"decode: results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
