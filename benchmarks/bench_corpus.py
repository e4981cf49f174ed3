"""Corpus throughput benchmark: ``xlmrxl.corpus.run`` (local engine; Ray engine with 1 and 2
workers) against naive loops over ``transformers.pipeline("feature-extraction")`` and ``xlmrxl.pipeline`` on the
same rows, all embedding with mean pooling.

Data: ``--rows`` texts of a realistic length mixture (5-120 words, built from the shipped multilingual corpus),
written to one parquet file. Model: random weights, XL-shaped (``--tiny``: hidden 64, 2 layers, the CPU smoke run;
default: hidden 1024, 8 layers on CPU, real XL shape 2560 x 36 on a GPU in bf16).

Peers, each timed end to end once (model already loaded, except the corpus runs, which include loading the model
in the worker and writing parquet blocks):
- ``transformers pipeline``: ``pipe(texts, batch_size=B)`` then mean pooling in Python (what one writes first);
- ``xlmrxl.pipeline``: ``pipe(texts, batch_size=B)`` with ``pooling="mean"`` (padded batches sorted by length);
- ``corpus local``: ``xlmrxl.corpus.run(..., engine="local")`` (token-budget packing, padding-free forward);
- ``corpus ray x1`` / ``x2``: ``engine="ray"`` with 1 and 2 workers, each on a fresh local cluster (CPU: of 1 and 2
  CPUs, one torch thread per worker), timed with actor start-up (skipped without Ray or with ``--no-ray``/``--quick``).
Rows: seconds, rows/s, tokens/s (real tokens) and the speed-up over the transformers pipeline in the same run; for
the corpus runs also ``rows_per_s_in_blocks``: rows over the busiest worker's time inside blocks (from the commit
records: compute + write, start-up excluded), which is what scales with workers once the models are loaded.
Written with ``benchmarks.harness.write_results`` as ``corpus{_tiny}.{json,md}`` under
``benchmarks/results/<device>/`` (or ``--out``).

    python -m benchmarks.bench_corpus [--tiny] [--quick] [--rows N] [--no-ray] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xlmrxl.tiny import tiny_shape

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import harness
else:
    from . import harness

import xlmrxl
import xlmrxl.corpus
from xlmrxl.tokenizer import CORPUS_PATH, train_sentencepiece

BASE = dict(
    vocab_size=1002,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
TINY = dict(BASE, **tiny_shape(num_hidden_layers=2, intermediate_size=128))
CPU = dict(BASE, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, intermediate_size=4096)
XL = dict(BASE, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, intermediate_size=10240)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of 5-120 words (a WMT-like mixture: many short, some long), from the shipped corpus."""
    g = torch.Generator().manual_seed(seed)
    words = " ".join(CORPUS_PATH.read_text(encoding="utf-8").split()).split(" ")
    out = []
    for _ in range(n):
        length = int(min(120, 5 + torch.empty(1).exponential_(1 / 25.0, generator=g).item()))
        start = int(torch.randint(0, len(words) - length, (1,), generator=g))
        out.append(" ".join(words[start : start + length]))
    return out


def fit(text: str, tok, max_tokens: int) -> str:
    """Shorten ``text`` until it fits the model (the small test vocabulary splits some scripts into many pieces)."""
    while len(tok(text, return_attention_mask=False)["input_ids"]) > max_tokens:
        text = text[: int(len(text) * 0.8)]
    return text


def make_model(d: Path, config: dict, dtype: torch.dtype) -> Path:
    train_sentencepiece(d, vocab_size=1000)
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(d)
    cfg = xlmrxl.XLMRobertaXLConfig(**dict(config, vocab_size=len(tok)))
    with harness.default_dtype(dtype):
        model = xlmrxl.XLMRobertaXLModel(cfg, add_pooling_layer=False)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _row(peer: str, seconds: float, rows: int, tokens: int, note: str = "", out: Path | None = None) -> dict:
    row = {"peer": peer, "seconds": seconds, "rows_per_s": rows / seconds, "tokens_per_s": tokens / seconds}
    if out is not None:  # corpus runs: the busiest worker's time in blocks (compute + write), start-up excluded
        busy: dict[str, float] = {}
        for rec in (json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")):
            busy[rec["worker"]] = busy.get(rec["worker"], 0.0) + rec["seconds"]
        row["rows_per_s_in_blocks"] = rows / max(busy.values())
        row["workers_seen"] = len(busy)
    row["note"] = note
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, 400 rows (a CI smoke run)")
    ap.add_argument("--quick", action="store_true", help="fewer rows and no Ray runs (a smoke run)")
    ap.add_argument("--rows", type=int, default=None, help="rows (default: 400 tiny, 2000 CPU, 20000 GPU)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of the pipeline peers (default 32)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared CPU)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    config = TINY if args.tiny else (XL if cuda else CPU)
    dtype = torch.bfloat16 if cuda and not args.tiny else torch.float32
    n = args.rows or (100 if args.quick else 400 if args.tiny else 20_000 if cuda else 2_000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="xlmrxl-bench-corpus-") as tmp:
        tmp = Path(tmp)
        model_dir = make_model(tmp / "model", config, dtype)
        tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(model_dir)
        texts = [fit(t, tok, 500) for t in make_texts(n)]
        pq.write_table(pa.table({"id": list(range(n)), "text": texts}), tmp / "in.parquet")
        tokens = sum(len(x) for x in tok(texts, return_attention_mask=False)["input_ids"])
        device = "cuda" if cuda else "cpu"
        dname = "bfloat16" if dtype == torch.bfloat16 else "float32"

        base = None
        try:
            import transformers

            hf_model = (
                transformers.XLMRobertaXLModel.from_pretrained(str(model_dir), dtype=dtype, add_pooling_layer=False)
                .to(device)
                .eval()
            )
            hf_tok = transformers.XLMRobertaTokenizer.from_pretrained(str(model_dir))
            pipe = transformers.pipeline("feature-extraction", model=hf_model, tokenizer=hf_tok, device=device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for out in pipe(texts, batch_size=args.batch_size, return_tensors=True):
                    out[0].float().mean(0)
            base = time.perf_counter() - t0
            rows.append(_row("transformers pipeline", base, n, tokens, f"batch_size={args.batch_size}"))
            del pipe, hf_model
        except Exception as exc:  # a missing or incompatible peer is reported, not fatal
            rows.append({"peer": "transformers pipeline", "note": f"skipped: {type(exc).__name__}: {exc}"[:160]})

        pipe = xlmrxl.pipeline("feature-extraction", model=str(model_dir), device=device, dtype=dtype, pooling="mean")
        t0 = time.perf_counter()
        pipe(texts, batch_size=args.batch_size)
        rows.append(_row("xlmrxl.pipeline", time.perf_counter() - t0, n, tokens, f"batch_size={args.batch_size}"))
        del pipe

        opts = dict(pooling="mean", dtype=dname, device=device, progress=False, rows_per_block=max(50, n // 8))
        t0 = time.perf_counter()
        xlmrxl.corpus.run("embed", model_dir, tmp / "in.parquet", tmp / "out-local", **opts)
        note = "includes model load + writes"
        rows.append(_row("corpus local", time.perf_counter() - t0, n, tokens, note, tmp / "out-local"))

        if not (args.no_ray or args.quick):
            rows.extend(_ray_rows(model_dir, tmp, opts, n, tokens, cuda))
    for r in rows:
        if base and "seconds" in r:
            r["speedup_vs_transformers"] = base / r["seconds"]
    out = harness.write_results(
        "corpus_tiny" if args.tiny else "corpus",
        rows,
        columns=[
            "peer",
            "seconds",
            "rows_per_s",
            "tokens_per_s",
            "speedup_vs_transformers",
            "rows_per_s_in_blocks",
            "workers_seen",
            "note",
        ],
        extra={"config": config, "dtype": dname, "n_rows": n, "n_tokens": tokens, "threads": torch.get_num_threads()},
        out_dir=args.out,
    )
    print(f"bench_corpus: {n} rows, {tokens} tokens; results in {out}")
    for r in rows:
        print(
            f"  {r['peer']:<24} "
            + (f"{r['rows_per_s']:10.1f} rows/s {r['tokens_per_s']:12.0f} tok/s" if "seconds" in r else r["note"])
        )
    return 0


def _ray_rows(model_dir: Path, tmp: Path, opts: dict, n: int, tokens: int, cuda: bool) -> list[dict]:
    try:
        import ray
    except ImportError:
        return [{"peer": "corpus ray", "note": "skipped: Ray is not installed (pip install 'xlmrxl[ray]')"}]
    out = []
    root = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p), "OMP_NUM_THREADS": "1"}
    if ray.is_initialized():
        ray.shutdown()
    for workers in (1, 2):
        # a fresh local cluster of `workers` CPUs (GPUs: all of them), so that each CPU worker runs one torch thread
        ray.init(
            num_cpus=None if cuda else workers,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": env},
        )
        try:
            t0 = time.perf_counter()
            kw = dict(opts, engine="ray", workers=workers)
            if not cuda:
                kw["num_gpus"] = 0
            xlmrxl.corpus.run("embed", model_dir, tmp / "in.parquet", tmp / f"out-ray{workers}", **kw)
            seconds = time.perf_counter() - t0
            note = "includes actor start-up (model load) + writes" + ("" if cuda else f"; {workers} CPU, 1 thread each")
            out.append(_row(f"corpus ray x{workers}", seconds, n, tokens, note, tmp / f"out-ray{workers}"))
        finally:
            ray.shutdown()
    return out


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
