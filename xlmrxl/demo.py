"""``xlmrxl demo``: a two-minute, offline tour on a small random-weight model of the XLM-RoBERTa-XL architecture.

Contract
--------
- Builds **once and deterministically** (fixed seeds, single-threaded SentencePiece training) a demo checkpoint in
  ``$XLMRXL_CACHE/demo-v1`` (default ``~/.cache/xlmrxl/demo-v1``): the tokenizer trained from the shipped corpus,
  and an ``XLMRobertaXLForMaskedLM`` with the XL head dim (hidden 320 = 4 heads of 80, 4 layers, intermediate 1280,
  vocabulary = tokenizer size rounded up to a multiple of 128, as the real 250880 is) saved with our
  ``save_pretrained``. The build is written to a temporary directory and renamed into place, so an interrupted
  build is never mistaken for a finished one. ``quick=True`` (tests) builds an even smaller model in ``demo-quick``.
- Runs fill-mask on a few multilingual sentences, then a **self-check** of every backend available here against an
  fp32 reference run (``reference`` always; ``triton`` on CUDA, or on CPU under ``TRITON_INTERPRET=1``;
  transformers' own model when transformers is installed): max abs difference of the last hidden state on real
  tokens (tolerance 1e-4 in fp32; in bf16/fp16 at most 2x the reference backend's own error + 1e-3), then a
  **timing table** (median forward latency per backend, and transformers'). The model runs in bf16 on CUDA and in
  fp32 on CPU unless ``dtype`` says otherwise.
- Says plainly that the weights are random, and how to point the CLI at a real checkpoint.
- ``run_demo(...)`` returns a dict with the results (the self-check diffs, timings) and writes the report to
  ``out`` (stdout by default); a failing backend is reported, not raised, and marks the check as failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from xlmrxl_kernels._utils import interpreting as _interpreting

from . import env, pipelines
from .backend import triton_not_supported
from .config import XLMRobertaXLConfig
from .modeling import XLMRobertaXLForMaskedLM
from .tokenizer import XLMRobertaTokenizer, train_sentencepiece

logger = logging.getLogger("xlmrxl")

DEMO_VERSION = "demo-v1"
DEMO_SHAPE = dict(hidden_size=320, num_attention_heads=4, num_hidden_layers=4, intermediate_size=1280)
QUICK_SHAPE = dict(hidden_size=160, num_attention_heads=2, num_hidden_layers=2, intermediate_size=640)
_DONE = ".complete"

SENTENCES = [
    "The bakery on the corner opens at <mask>.",
    "Le marché du samedi déborde de <mask>.",
    "Утром над рекой висел густой <mask>.",
    "我们明天下午在<mask>见面。",
    "يفتح السوق القديم أبوابه كل <mask>.",
]
CHECK_TEXTS = [
    "Die Straßenbahn fährt alle zehn Minuten bis zum Hauptbahnhof.",
    "Το πλοίο για τη Νάξο φεύγει κάθε πρωί.",
    "Pizza tonight? 🍕 or sushi?",
    "मेरी दादी हर सुबह बगीचे में फूलों को पानी देती हैं।",
]


def cache_root() -> Path:
    """``$XLMRXL_CACHE`` if set, else ``~/.cache/xlmrxl``."""
    path = env.get("XLMRXL_CACHE")  # xlmrxl_kernels.env: cached (env.refresh() re-reads)
    return Path(str(path)).expanduser() if path else Path.home() / ".cache" / "xlmrxl"


def demo_dir(quick: bool = False) -> Path:
    return cache_root() / ("demo-quick" if quick else DEMO_VERSION)


def build_demo_checkpoint(directory: Path | None = None, *, quick: bool = False) -> Path:
    """Build the demo checkpoint (tokenizer + random-weight MLM) unless it is already there; return its path."""

    target = Path(directory) if directory is not None else demo_dir(quick)
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        train_sentencepiece(staging, vocab_size=1000, seed=0)
        tok = XLMRobertaTokenizer.from_pretrained(staging, model_max_length=512)
        tok.save_pretrained(staging)
        vocab = -(-len(tok) // 128) * 128  # round up to a multiple of 128, like the real 250002 -> 250880
        shape = QUICK_SHAPE if quick else DEMO_SHAPE
        config = XLMRobertaXLConfig(
            vocab_size=vocab,
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            **shape,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = XLMRobertaXLForMaskedLM(config)
        model.save_pretrained(staging)
        (staging / _DONE).write_text(f"xlmrxl {DEMO_VERSION} quick={quick}\n")
        if target.exists():  # a stale, unfinished build
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("xlmrxl: built the demo checkpoint at %s", target)
    return target


def available_backends() -> list[str]:
    """``reference`` always; ``triton`` when CUDA is present or the Triton CPU interpreter is on."""
    names = ["reference"]
    interpreting = _interpreting()
    if torch.cuda.is_available() or interpreting:
        if not triton_not_supported():
            names.append("triton")
    return names


def _median_ms(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median latency of each function in ms. The runs are interleaved (a, b, a, b, ...) so that a change in machine
    load hits every contender alike rather than whichever happened to run during it."""

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    for fn in fns.values():
        timed(fn)  # warm-up (compilation, caches)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def run_demo(
    out: TextIO | None = None,
    *,
    quick: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    repeats: int | None = None,
    backends: list[str] | None = None,
    compare_transformers: bool = True,
) -> dict[str, Any]:
    """Build (once) and run the demo; write the report to ``out``. Returns the results as a dict.

    ``backends`` limits the self-check to these (default: all available); ``compare_transformers=False`` skips
    transformers' model; ``repeats`` is the number of timed forwards (default 5, 2 when ``quick``)."""

    out = out if out is not None else sys.stdout
    w = out.write
    dev = pipelines.parse_device("auto" if device is None else device)  # the demo shows the kernels: a GPU if usable
    parsed = pipelines.parse_dtype(dtype)
    run_dtype = parsed if isinstance(parsed, torch.dtype) else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    interpreting = _interpreting()
    repeats = repeats if repeats is not None else (2 if quick else 5)

    t0 = time.perf_counter()
    built = not (demo_dir(quick) / _DONE).is_file()
    path = build_demo_checkpoint(quick=quick)
    w(
        f"xlmrxl demo: {'built' if built else 'reusing'} the demo checkpoint at {path} "
        f"({time.perf_counter() - t0:.1f} s)\n"
    )
    w(
        "NOTE: this model has RANDOM weights (XLM-RoBERTa-XL architecture, shrunk), so its predictions are "
        "meaningless.\n      For real predictions, download a checkpoint (e.g. facebook/xlm-roberta-xl) and run:\n"
        '      xlmrxl fill-mask "Paris is the <mask> of France." --model /path/to/xlm-roberta-xl\n\n'
    )

    tok = XLMRobertaTokenizer.from_pretrained(path)
    model = XLMRobertaXLForMaskedLM.from_pretrained(path, dtype=run_dtype, device=dev, backend="reference")
    cfg = model.config
    w(
        f"model: hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads of "
        f"{cfg.hidden_size // cfg.num_attention_heads}, {cfg.num_hidden_layers} layers, intermediate "
        f"{cfg.intermediate_size}, vocab {cfg.vocab_size} (tokenizer {len(tok)}), "
        f"{model.num_parameters() / 1e6:.2f} M parameters, {str(run_dtype).replace('torch.', '')} on {dev}\n\n"
    )

    # -- fill-mask --------------------------------------------------------------------------------------------
    fill = pipelines.pipeline("fill-mask", model=model, tokenizer=tok, backend=None, top_k=3)
    sentences = SENTENCES[:2] if quick else SENTENCES
    w("fill-mask (top 3):\n")
    for text, preds in zip(sentences, fill(sentences)):
        shown = ", ".join(f"{p['token_str']!r} {p['score']:.4f}" for p in preds)
        w(f"  {text}\n      -> {shown}\n")
    w("\n")

    # -- self-check -------------------------------------------------------------------------------------------
    texts = CHECK_TEXTS[:2] if quick else CHECK_TEXTS
    enc = tok(texts, padding=True, return_tensors="pt")
    real = enc["attention_mask"].bool()

    def hidden(m: nn.Module, e):
        with torch.inference_mode():
            o = m.roberta(input_ids=e["input_ids"], attention_mask=e["attention_mask"])
            return (o.last_hidden_state if hasattr(o, "last_hidden_state") else o[0]).float().cpu()

    truth_model = XLMRobertaXLForMaskedLM.from_pretrained(path, dtype=torch.float32, device="cpu", backend="reference")
    truth = hidden(truth_model, enc)[real]
    have = available_backends()
    if backends is not None:
        unknown = [b for b in backends if b not in ("reference", "triton")]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)} for the demo; choose from reference, triton")
        missing = [b for b in backends if b not in have]
        for b in missing:
            w(f"(backend {b!r} is not available here: it needs CUDA, or TRITON_INTERPRET=1 on CPU)\n")
        have = [b for b in have if b in backends]
    e_dev = {k: v.to(dev) for k, v in enc.items()}
    rows: list[dict[str, Any]] = []
    runners = {}

    def check(name: str, run):
        row: dict[str, Any] = {"backend": name}
        try:
            got = run()[real]
            row["max_abs_diff"] = float((got - truth).abs().max())
            runners[name] = run
        except Exception as exc:  # report, do not crash the demo
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)

    for name in have:
        check(name, lambda n=name: (model.set_backend(n), hidden(model, e_dev))[1])
    hf = _transformers_model(path, run_dtype, dev) if compare_transformers else None
    if hf is not None:
        check("transformers", lambda: hidden(hf, e_dev))
    # Tolerance: fp32 must agree closely; in 16-bit dtypes the house rule "error vs fp32 <= 2x plain PyTorch's
    # error in the same dtype", with the reference backend as plain PyTorch.
    if run_dtype == torch.float32:
        tol = 1e-4
    else:
        base = next((r.get("max_abs_diff") for r in rows if r["backend"] == "reference"), None)
        if base is None:
            model.set_backend("reference")
            base = float((hidden(model, e_dev)[real] - truth).abs().max())
        tol = 2 * base + 1e-3
    for row in rows:
        row["ok"] = "max_abs_diff" in row and row["max_abs_diff"] <= tol
    w(f"self-check: last hidden state on {int(real.sum())} real tokens vs an fp32 reference run (tolerance {tol:g}):\n")
    for row in rows:
        status = "ok" if row["ok"] else "FAILED"
        detail = f"max |diff| = {row['max_abs_diff']:.3e}" if "max_abs_diff" in row else row["error"]
        note = " (Triton CPU interpreter)" if row["backend"] == "triton" and dev.type == "cpu" and interpreting else ""
        w(f"  {row['backend']:<13} {status:<7} {detail}{note}\n")
    w("\n")

    # -- timing -----------------------------------------------------------------------------------------------
    timings: dict[str, float] = {}
    w(f"forward latency, batch of {len(texts)} ({enc['input_ids'].shape[1]} tokens padded), median of {repeats}:\n")
    timed = {name: fn for name, fn in runners.items() if not (name == "triton" and dev.type == "cpu")}
    timings.update(_median_ms(timed, repeats))
    for name in runners:
        if name not in timings:
            w(f"  {name:<13}       n/a     (Triton's CPU interpreter checks correctness; time it on a GPU)\n")
        else:
            w(f"  {name:<13} {timings[name]:9.2f} ms\n")
    if hf is None and compare_transformers:
        w("  (install transformers to time it here too)\n")
    model.set_backend("auto")
    ok = bool(rows) and all(r["ok"] for r in rows)
    verdict = "passed" if ok else "FAILED" if rows else "not run (no backend to check here)"
    w(f"\nself-check {verdict}; total demo time {time.perf_counter() - t0:.1f} s\n")
    return {"path": str(path), "checks": rows, "timings_ms": timings, "ok": ok}


def _transformers_model(path: Path, dtype: torch.dtype, device: torch.device):
    """transformers' own model from the demo checkpoint, or None when transformers is not installed."""
    try:
        import transformers
    except Exception:
        return None
    prev = logging.getLogger("transformers").level
    try:
        transformers.logging.set_verbosity_error()
        kw = {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}
        model = transformers.XLMRobertaXLForMaskedLM.from_pretrained(str(path), **kw)
        return model.to(device).eval()
    except Exception as exc:
        logger.info("xlmrxl: could not load the demo checkpoint in transformers (%s)", exc)
        return None
    finally:
        logging.getLogger("transformers").setLevel(prev)
