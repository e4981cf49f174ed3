"""sentence-transformers benchmark: sentences per second of ``SentenceTransformer.encode`` (mean pooling,
normalised) with and without ``xlmrxl.accelerate``, on the same model object and the same sentences, with the
embeddings compared.

Model: a SentenceTransformer (Transformer + mean pooling + normalisation) on an XLM-RoBERTa-XL-shaped encoder
(hidden 2560, 36 layers; random weights, built offline by ``benchmarks.clients_models``); sentences of 5-120 words
(uniform) from the shipped multilingual corpus, so every batch is padded. Peers, interleaved round-robin:
``sentence-transformers`` (its own code on transformers) and ``st+xlmrxl`` (after ``xlmrxl.accelerate``). Rows: median
seconds per ``encode`` over ``--rep`` runs, sentences/s, speed-up, max |embedding difference|, (GPU) peak memory.
bf16 on a GPU; ``--tiny``: a toy shape (hidden 64, 3 layers) on CPU in fp32 (what CI runs; says nothing about XL).

Needs sentence-transformers (the ``.venv-clients`` / ``.venv-st5`` environments of ``make test-clients``); without
it, says so and exits 0.

    python -m benchmarks.bench_sentence_transformers [--tiny] [--quick] [--sentences N] [--batch-size B] [--out DIR]
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


def _missing() -> str | None:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        return f"sentence-transformers is not installed ({exc}); run it in .venv-clients or .venv-st5"
    return None


def _build(tiny: bool, dtype, device, root: Path):
    """A SentenceTransformer on the tiny checkpoint; at XL size its transformers model is swapped for a random one
    of the XL shape (built in ``dtype`` on ``device``: no 7 GB checkpoint written and read back)."""
    import transformers
    from sentence_transformers import SentenceTransformer

    tiny_dir = clients_models.encoder_dir(root / "tiny", clients_models.TINY)
    st = SentenceTransformer(str(tiny_dir), device="cpu")
    st.max_seq_length = 512  # XLM-R's positions: 514 - 2 (the tokenizer directory records no limit)
    if not tiny:
        holder = next(m for m in st.modules() if getattr(m, "auto_model", None) is not None)
        cfg = transformers.XLMRobertaXLConfig.from_pretrained(str(tiny_dir), **clients_models.XL)
        with harness.default_dtype(dtype), torch.device(device):
            xl = transformers.XLMRobertaXLModel(cfg, add_pooling_layer=False)
        clients_models.randomise(xl)
        holder._modules["model" if "model" in holder._modules else "auto_model"] = xl.eval()
    return st.to(device=device, dtype=dtype).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy shape on CPU in fp32 (CI): exercises the code path only")
    p.add_argument("--quick", action="store_true", help="fewer sentences and repetitions")
    p.add_argument("--sentences", type=int, default=None, help="sentences per encode (default 4096; tiny 96)")
    p.add_argument("--batch-size", type=int, default=32, help="encode batch size (default 32)")
    p.add_argument("--rep", type=int, default=None, help="timed encodes per peer (default 5; quick 2)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results/<device>/)")
    args = p.parse_args(argv)
    name = "sentence_transformers_tiny_cpu" if args.tiny else "sentence_transformers"
    reason = _missing()
    if reason is None and not args.tiny and not torch.cuda.is_available():
        reason = f"no CUDA GPU on this machine ({harness.device_name()}); use --tiny on CPU"
    if reason:
        print(f"{name}: skipped: {reason}")
        if args.out is not None:  # an explicit output directory always gets a record of the run
            harness.write_results(name, [], extra={"skipped": reason}, out_dir=Path(args.out))
        return 0
    import sentence_transformers

    import xlmrxl

    n = args.sentences or (96 if args.tiny else (1024 if args.quick else 4096))
    rep = args.rep or (2 if args.quick else 5)
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        torch.set_num_threads(1)
    texts = clients_models.sentences(n, 5, 120, seed=1)
    with tempfile.TemporaryDirectory(prefix="xlmrxl-bench-st-") as tmp:
        st = _build(args.tiny, dtype, device, Path(tmp))

    def encode():
        return st.encode(
            texts,
            batch_size=args.batch_size,
            normalize_embeddings=True,
            convert_to_tensor=True,
            show_progress_bar=False,
        )

    peers = {"sentence-transformers": xlmrxl.deaccelerate, "st+xlmrxl": xlmrxl.accelerate}
    times, embs, peak = {p: [] for p in peers}, {}, {}
    for switch in peers.values():  # warm-up
        switch(st)
        encode()
    for _ in range(rep):
        for peer, switch in peers.items():
            switch(st)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            embs[peer] = encode().float()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak[peer] = torch.cuda.max_memory_allocated() / 2**30
            times[peer].append(time.perf_counter() - t0)
    xlmrxl.deaccelerate(st)
    base = statistics.median(times["sentence-transformers"])
    rows = []
    for peer in peers:
        s = statistics.median(times[peer])
        rows.append(
            {
                "model": "xlm-roberta-xl" + ("-tiny" if args.tiny else ""),
                "sentence_transformers": sentence_transformers.__version__,
                "dtype": str(dtype).replace("torch.", ""),
                "sentences": n,
                "batch_size": args.batch_size,
                "peer": peer,
                "s_per_encode": s,
                "sentences_per_s": n / s,
                "speedup": base / s,
                "max_embedding_diff": float((embs[peer] - embs["sentence-transformers"]).abs().max()),
                "peak_gib": peak.get(peer),
            }
        )
        print(f"{peer:>22}: {n / s:8.1f} sentences/s ({base / s:.2f}x)")
    out = harness.write_results(name, rows, out_dir=Path(args.out) if args.out else None)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
