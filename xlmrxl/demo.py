"""``xlmrxl demo``: a two-minute, offline proof, on a mixed-length multilingual batch, that the padding-free fused path
gives the exact path's numbers, and how much faster it is. Default model: a small random-weight model of the
XLM-RoBERTa-XL architecture; ``--model DIR``: a real checkpoint.

Contract
--------
- Builds **once and deterministically** (fixed seeds, single-threaded SentencePiece training) a demo checkpoint in
  ``$XLMRXL_CACHE/demo-v1`` (default ``~/.cache/xlmrxl/demo-v1``): the tokenizer trained from the shipped corpus,
  and an ``XLMRobertaXLForMaskedLM`` with the XL head dim (hidden 320 = 4 heads of 80, 4 layers, intermediate 1280,
  vocabulary = tokenizer size rounded up to a multiple of 128, as the real 250880 is) saved with our
  ``save_pretrained``. The build is written to a temporary directory and renamed into place, so an interrupted
  build is never mistaken for a finished one. ``quick=True`` (tests) builds an even smaller model in ``demo-quick``.
  ``model=DIR`` skips the build and runs everything below on that checkpoint (its own tokenizer).
- The batch: rows of 1 to 4 consecutive lines of the bundled multilingual corpus (``xlmrxl/data/corpus.txt``),
  right-padded; the share of padding the fused path skips is printed.
- **Check**: the fused, padding-free path (``forward`` under ``inference_mode``; each kernel backend available here)
  against our exact path (the transformers-equivalent code, padded, forced by ``padded_loss``), on real tokens:
  max abs difference of the last hidden state, the tolerance printed beside it (1e-4 in fp32; in bf16/fp16 2x the
  exact path's own error against an fp32 run + 1e-3). transformers' own model is checked too when installed.
- **Timing**: the contenders run interleaved (exact, fused, ..., exact, fused, ...), after a warm-up, ``repeats``
  rounds (default: at least 10, then until 50 rounds or 30 s); min and median per row, and the exact path's median
  over each row's (the speed-up). Rows: exact; fused with PyTorch ops; fused with the Triton kernels (a GPU only;
  under ``TRITON_INTERPRET=1`` on CPU they are checked, not timed); transformers when installed. bf16 on CUDA, fp32
  on CPU unless ``dtype`` says otherwise.
- Says plainly that the demo model's weights are random (its fill-mask predictions are meaningless) and how to run
  on a real checkpoint (``xlmrxl demo --model DIR``).
- ``run_demo(...)`` returns a dict (checks, timings, ratios, padding share, ok) and writes the report to ``out``
  (stdout by default); a failing contender is reported, not raised, and marks the check as failed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from xlmrxl_kernels._utils import interpreting as _interpreting

from . import env, pipelines
from .backend import triton_not_supported
from .config import XLMRobertaXLConfig
from .modeling import XLMRobertaXLForMaskedLM, XLMRobertaXLModel
from .tokenizer import CORPUS_PATH, XLMRobertaTokenizer, train_sentencepiece

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
EXACT_REASON = "xlmrxl demo: the exact path, timed against the fused one"


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
    if torch.cuda.is_available() or _interpreting():
        if not triton_not_supported():
            names.append("triton")
    return names


def demo_batch(rows: int = 16, seed: int = 0) -> list[str]:
    """``rows`` texts of 1 to 4 consecutive lines of the bundled multilingual corpus (mixed lengths, fixed seed)."""
    lines = [ln.strip() for ln in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        k = rng.choice((1, 1, 1, 2, 2, 3, 4))
        start = rng.randrange(len(lines) - k)
        out.append(" ".join(lines[start : start + k]))
    return out


def interleaved_ms(fns: dict[str, Any], repeats: int | None, budget_s: float = 30.0) -> dict[str, dict[str, float]]:
    """Min and median latency (ms) of each function, run interleaved (a, b, a, b, ...) after one warm-up each, so a
    change in machine load hits every contender alike. ``repeats=None``: at least 10 rounds, then until 50 rounds or
    ``budget_s`` seconds."""

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    for fn in fns.values():
        timed(fn)  # warm-up (compilation, caches, tuning)
    times: dict[str, list[float]] = {name: [] for name in fns}
    t0 = time.perf_counter()
    rounds = 0
    while True:
        for name, fn in fns.items():
            times[name].append(timed(fn))
        rounds += 1
        if repeats is not None:
            if rounds >= repeats:
                break
        elif rounds >= 50 or (rounds >= 10 and time.perf_counter() - t0 > budget_s):
            break
    return {n: {"min": min(t), "median": statistics.median(t), "runs": len(t)} for n, t in times.items()}


def run_demo(
    out: TextIO | None = None,
    *,
    quick: bool = False,
    model: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str | None = None,
    repeats: int | None = None,
    backends: list[str] | None = None,
    compare_transformers: bool = True,
) -> dict[str, Any]:
    """Build (once) and run the demo; write the report to ``out``. Returns the results as a dict.

    ``model``: a checkpoint directory to run on instead of the random-weight demo model; ``backends`` limits the
    fused contenders to these (default: all available); ``compare_transformers=False`` skips transformers' model;
    ``repeats``: timed rounds (default: adaptive, see the module docstring)."""

    out = out if out is not None else sys.stdout
    w = out.write
    dev = pipelines.parse_device("auto" if device is None else device)  # the demo shows the kernels: a GPU if usable
    parsed = pipelines.parse_dtype(dtype)
    run_dtype = parsed if isinstance(parsed, torch.dtype) else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    t0 = time.perf_counter()
    if model is None:
        built = not (demo_dir(quick) / _DONE).is_file()
        path = build_demo_checkpoint(quick=quick)
        w(
            f"xlmrxl demo: {'built' if built else 'reusing'} the demo checkpoint at {path} "
            f"({time.perf_counter() - t0:.1f} s)\n"
        )
        w(
            "NOTE: this model has RANDOM weights (the XLM-RoBERTa-XL architecture, shrunk), so its predictions are "
            "meaningless;\n      the demo shows that the fused path computes the same numbers, faster. To run it on "
            "a real checkpoint\n      (e.g. a local copy of facebook/xlm-roberta-xl):  xlmrxl demo --model DIR\n\n"
        )
    else:
        path = Path(model)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {str(path)!r} has no config.json; pass a checkpoint directory")
        w(f"xlmrxl demo on the checkpoint {path}\n\n")
    have = available_backends()
    if backends is not None:
        unknown = [b for b in backends if b not in ("reference", "triton")]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)} for the demo; choose from reference, triton")
        for b in backends:
            if b not in have:
                w(f"(backend {b!r} is not available here: it needs CUDA, or TRITON_INTERPRET=1 on CPU)\n")
        have = [b for b in have if b in backends]

    tok = XLMRobertaTokenizer.from_pretrained(path)
    archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    cls = XLMRobertaXLForMaskedLM if model is None or any("MaskedLM" in a for a in archs) else XLMRobertaXLModel
    extra = {} if cls is XLMRobertaXLForMaskedLM else {"add_pooling_layer": False}
    nets = {b: cls.from_pretrained(path, dtype=run_dtype, device=dev, backend=b, **extra) for b in have}
    net = next(iter(nets.values())) if nets else cls.from_pretrained(path, dtype=run_dtype, device=dev, **extra)
    cfg = net.config
    w(
        f"model: hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads of "
        f"{cfg.hidden_size // cfg.num_attention_heads}, {cfg.num_hidden_layers} layers, intermediate "
        f"{cfg.intermediate_size}, vocab {cfg.vocab_size}, {net.num_parameters() / 1e6:.2f} M parameters, "
        f"{str(run_dtype).replace('torch.', '')} on {dev}\n"
    )

    # -- the batch --------------------------------------------------------------------------------------------
    texts = demo_batch(6 if quick else 16)
    enc = tok(texts, padding=True, truncation=True, max_length=min(512, cfg.max_position_embeddings - 2))
    enc = {k: torch.tensor(enc[k]).to(dev) for k in ("input_ids", "attention_mask")}
    real = enc["attention_mask"].bool()
    n_real, n_padded = int(real.sum()), real.numel()
    padding = 1.0 - n_real / n_padded
    lens = real.sum(1).tolist()
    w(
        f"batch: {len(texts)} rows of the bundled multilingual corpus, {min(lens)} to {max(lens)} tokens: "
        f"{n_real} real tokens of {n_padded} padded; the fused path skips the padding "
        f"({100 * padding:.1f}% of the batch)\n\n"
    )

    def backbone(m):
        return getattr(m, "roberta", m)

    def exact():
        with torch.inference_mode():
            return backbone(net)(**enc, padded_loss=EXACT_REASON).last_hidden_state

    def fused(b):
        def run():
            with torch.inference_mode():
                return backbone(nets[b])(**enc).last_hidden_state

        return run

    contenders: dict[str, Any] = {"exact": exact}
    labels = {"exact": "exact path (transformers' code, padded)"}
    for b in have:
        contenders[f"fused-{b}"] = fused(b)
        labels[f"fused-{b}"] = "fused, padding-free, " + ("PyTorch ops" if b == "reference" else "Triton kernels")
    hf = _transformers_model(path, run_dtype, dev) if compare_transformers else None
    if hf is not None:
        import transformers

        def hf_run():
            with torch.inference_mode():
                return hf(**enc).last_hidden_state

        contenders["transformers"] = hf_run
        labels["transformers"] = f"transformers {transformers.__version__} (padded)"

    # -- check ------------------------------------------------------------------------------------------------
    base = exact()[real].float()
    if run_dtype == torch.float32:
        tol = 1e-4
    else:  # house rule: the error vs fp32 within 2x plain PyTorch's own (the exact path in this dtype) + 1e-3
        truth_net = cls.from_pretrained(path, dtype=torch.float32, device=dev, backend="reference", **extra)
        with torch.inference_mode():
            truth = backbone(truth_net)(**enc, padded_loss=EXACT_REASON).last_hidden_state[real].float()
        del truth_net
        tol = 2 * float((base - truth).abs().max()) + 1e-3
    checks: list[dict[str, Any]] = []
    for name, fn in contenders.items():
        if name == "exact":
            continue
        row: dict[str, Any] = {"name": name, "tolerance": tol}
        try:
            row["max_abs_diff"] = float((fn()[real].float() - base).abs().max())
            row["ok"] = row["max_abs_diff"] <= tol
        except Exception as exc:  # report, do not crash the demo
            row["error"], row["ok"] = f"{type(exc).__name__}: {exc}", False
        checks.append(row)
    w(
        f"check: last hidden state on the {n_real} real tokens vs the exact path (values up to "
        f"{float(base.abs().max()):.2f}; tolerance {tol:g} absolute):\n"
    )
    for row in checks:
        detail = f"max |diff| = {row['max_abs_diff']:.2e}" if "max_abs_diff" in row else row["error"]
        w(f"  {labels[row['name']]:<44} {'ok' if row['ok'] else 'FAILED':<7} {detail}\n")
    w("\n")

    # -- timing -----------------------------------------------------------------------------------------------
    failed = {r["name"] for r in checks if "error" in r}
    untimed = {n for n in contenders if n == "fused-triton" and dev.type == "cpu"}
    timed = {n: fn for n, fn in contenders.items() if n not in failed | untimed}
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)  # one thread: steadier timings on a shared machine (the gain is the same)
    try:
        timings = interleaved_ms(timed, 3 if quick and repeats is None else repeats)
    finally:
        torch.set_num_threads(threads)
    runs = next(iter(timings.values()))["runs"]
    where = "1 CPU thread" if dev.type == "cpu" else str(dev)
    w(f"forward latency of the batch, {runs} interleaved rounds on {where} (ms; speed-up = exact median / row's):\n")
    w(f"  {'':<44} {'min':>9} {'median':>9}  speed-up\n")
    ratios = {n: timings["exact"]["median"] / t["median"] for n, t in timings.items()}
    for name in contenders:
        if name in timings:
            t = timings[name]
            w(f"  {labels[name]:<44} {t['min']:9.2f} {t['median']:9.2f}  {ratios[name]:.2f}x\n")
        elif name in untimed:
            w(f"  {labels[name]:<44}       n/a (Triton's CPU interpreter checks correctness; time it on a GPU)\n")
    if "fused-triton" in timings and "fused-reference" in timings:
        r = timings["fused-reference"]["median"] / timings["fused-triton"]["median"]
        w(f"  Triton kernels vs PyTorch ops (both fused, padding-free): {r:.2f}x\n")
    if "transformers" in timings:
        for name in timings:
            if name.startswith("fused"):
                r = timings["transformers"]["median"] / timings[name]["median"]
                w(f"  {labels[name]} vs transformers: {r:.2f}x\n")
    elif compare_transformers:
        w("  (transformers is not installed: pip install transformers to add it as a row)\n")
    if dev.type == "cpu":
        w("  (no GPU here: on CPU the gain is the skipped padding alone; the Triton kernels need a GPU)\n")
    w("\n")

    # -- fill-mask --------------------------------------------------------------------------------------------
    if isinstance(net, XLMRobertaXLForMaskedLM):
        fill = pipelines.pipeline("fill-mask", model=net, tokenizer=tok, backend=None, top_k=3)
        note = " (RANDOM weights: these predictions are meaningless)" if model is None else ""
        w(f"fill-mask, top 3{note}:\n")
        for text, preds in zip(SENTENCES[:2] if quick else SENTENCES, fill(SENTENCES[:2] if quick else SENTENCES)):
            shown = ", ".join(f"{p['token_str']!r} {p['score']:.4f}" for p in preds)
            w(f"  {text}\n      -> {shown}\n")
        w("\n")
    ok = bool(checks) and all(r["ok"] for r in checks)
    verdict = "passed" if ok else "FAILED" if checks else "not run (no fused backend to check here)"
    w(f"check {verdict}; total demo time {time.perf_counter() - t0:.1f} s\n")
    return {
        "path": str(path),
        "checks": checks,
        "timings_ms": timings,
        "speedup": ratios,
        "padding_avoided": padding,
        "real_tokens": n_real,
        "padded_tokens": n_padded,
        "ok": ok,
    }


def _transformers_model(path: Path, dtype: torch.dtype, device: torch.device) -> Any:
    """transformers' own base model from the checkpoint, or None when transformers is not installed."""
    try:
        import transformers
    except Exception:
        return None
    prev = logging.getLogger("transformers").level
    tlog = transformers.utils.logging
    bar_was_on = getattr(tlog, "is_progress_bar_enabled", lambda: False)()
    try:
        transformers.logging.set_verbosity_error()
        if bar_was_on:
            tlog.disable_progress_bar()  # transformers 5's "Loading weights" bar would cut into the report
        kw = {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}
        model = transformers.XLMRobertaXLModel.from_pretrained(str(path), add_pooling_layer=False, **kw)
        return model.to(device).eval()
    except Exception as exc:
        logger.info("xlmrxl: could not load the checkpoint in transformers (%s)", exc)
        return None
    finally:
        logging.getLogger("transformers").setLevel(prev)
        if bar_was_on:
            tlog.enable_progress_bar()
