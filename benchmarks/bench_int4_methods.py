"""int4 methods rtn / mse / gptq on one model: quality (vs the unquantized model) and speed (the same by construction).

Per method: seconds to quantize, mean relative weight error ``||W - Wq||_F / ||W||_F``, final-hidden-state cosine
and logits error (1 - cosine) against the bf16 model on held-out texts (real tokens only), and the forward time of
the quantized model (``int4_matmul`` Triton kernel) next to bf16's. The three methods write the same format, so
their forward times must agree within noise: the run proves the format is unchanged.

GPU: an XL-shaped model (hidden 2560, intermediate 10240, 32 heads; ``--layers`` deep, 6 by default, random init
with a word-embedding table scaled 10x so the residual stream is embedding-dominated as in a trained model), bf16,
texts from ``--texts`` (one per line) or the shipped corpus, tokenized with a SentencePiece model trained on it;
even lines calibrate GPTQ, odd lines evaluate. ``--tiny`` runs the quality part on CPU at toy size (hidden 256,
fp32) to check the script; its numbers mean little. Without a GPU and without ``--tiny`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import harness


def _texts(path: str | None) -> list[str]:
    from xlmrxl.tokenizer import CORPUS_PATH

    src = Path(path) if path else CORPUS_PATH
    return [t.strip() for t in src.read_text(encoding="utf-8").splitlines() if t.strip()]


def _model(tiny: bool, layers: int, device: str, dtype: torch.dtype):
    from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLForMaskedLM

    shape = (
        {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
        if tiny
        else {"hidden_size": 2560, "intermediate_size": 10240, "num_attention_heads": 32}
    )
    cfg = XLMRobertaXLConfig(
        **shape,
        num_hidden_layers=layers,
        vocab_size=1008,
        max_position_embeddings=514,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    with harness.default_dtype(dtype), torch.device(device):
        model = XLMRobertaXLForMaskedLM(cfg).eval()
    with torch.no_grad():
        model.roberta.embeddings.word_embeddings.weight.mul_(10)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU, toy size, quality part only (checks the script)")
    p.add_argument("--quick", action="store_true", help="fewer texts and timing repeats")
    p.add_argument("--layers", type=int, default=None, help="encoder layers of the XL-shaped model (default 6)")
    p.add_argument("--texts", default=None, help="text file, one per line (default: the shipped corpus)")
    p.add_argument("--methods", default="rtn,mse,gptq")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results/<device>/)")
    args = p.parse_args(argv)
    if not args.tiny:
        harness.require_gpu("bench_int4_methods")
    from xlmrxl.quantization import final_hidden_states, hidden_cosine, quantize, weight_error
    from xlmrxl.tokenizer import XLMRobertaTokenizer, train_sentencepiece

    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    layers = args.layers or (2 if args.tiny else 6)
    texts = _texts(args.texts)
    n = 48 if (args.quick or args.tiny) else len(texts)
    calib, evaluation = texts[0::2][:n], texts[1::2][: max(16, n // 2)]
    with tempfile.TemporaryDirectory() as d:
        train_sentencepiece(d, vocab_size=1000)
        tok = XLMRobertaTokenizer.from_pretrained(d)
    base = _model(args.tiny, layers, device, dtype)
    enc = tok(evaluation, padding=True, truncation=True, max_length=256, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    real = mask.bool()
    with torch.no_grad():
        ref_logits = base(input_ids=ids, attention_mask=mask).logits.float()
    ref_hidden = final_hidden_states(base, evaluation, tok)
    rows = []
    if not args.tiny:
        ms = harness.bench(lambda: base(input_ids=ids, attention_mask=mask), rep=10 if args.quick else 50)["ms"]
        rows.append({"method": "bf16 (unquantized)", "forward_ms": ms})
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        model = copy.deepcopy(base)
        kw = {"calibration": calib, "tokenizer": tok} if method == "gptq" else {}
        t0 = time.perf_counter()
        quantize(model, method=method, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        row = {
            "method": method,
            "quantize_s": seconds,
            "weight_error": weight_error(base, model),
            "hidden_cosine": hidden_cosine(ref_hidden, model, evaluation, tok)["mean"],
            "logits_error": float((1 - F.cosine_similarity(logits[real], ref_logits[real], dim=-1)).mean()),
        }
        if not args.tiny:
            row["forward_ms"] = harness.bench(
                lambda m=model: m(input_ids=ids, attention_mask=mask), rep=10 if args.quick else 50
            )["ms"]
        rows.append(row)
        del model
    rtn = next((r for r in rows if r["method"] == "rtn"), None)
    for r in rows:
        if rtn is not None and "logits_error" in r:
            r["logits_error_vs_rtn"] = r["logits_error"] / max(rtn["logits_error"], 1e-30)
    name = "int4_methods_tiny_cpu" if args.tiny else "int4_methods"
    cols = ["method", "quantize_s", "weight_error", "hidden_cosine", "logits_error", "logits_error_vs_rtn"]
    out = harness.write_results(
        name,
        rows,
        columns=cols + ([] if args.tiny else ["forward_ms"]),
        extra={"layers": layers, "calibration_texts": len(calib), "evaluation_texts": len(evaluation)},
        out_dir=Path(args.out) if args.out else None,
    )
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
