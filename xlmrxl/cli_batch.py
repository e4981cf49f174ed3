"""The stdin batch commands of the ``xlmrxl`` CLI: ``fill-mask``, ``embed``, ``classify`` (one input per line).

Contract
--------
- The text is an argument, or one input per line on stdin when it is omitted or ``-``. Lines are numbered from 1 as
  in the input (empty lines are skipped but counted); stdin is read as bytes and decoded per line, so a line that
  is not UTF-8 is that line's error, not the whole run's.
- A bad line (not UTF-8, longer than the model takes, no ``<mask>`` for fill-mask, any error computing it alone)
  gets an error record in its place, and every good line gets its output, in input order: with ``--json`` the
  record is ``{"line": N, "input": ..., "error": ...}``; in plain output an ``error (line N): ...`` line (a JSON
  object for ``embed``, whose plain output is one JSON value per line). Each error is also written to stderr, with a
  count at the end, and the exit code is 1 when some line failed (0 when all succeeded). An argument that fails is
  an ordinary error (exit 1).
- Inputs are computed in chunks (``--batch-size`` x 16 lines, sorted by length within the chunk by the pipeline);
  a chunk that fails is retried line by line to find the bad ones. A progress bar over the lines goes to stderr
  (``xlmrxl.progress``: when stderr is a terminal or ``XLMRXL_PROGRESS=on``; ``--progress`` forces it,
  ``--quiet`` turns it off).
- ``embed --pooling``: ``auto`` (default), ``cls``, ``mean`` or ``none`` (token states): ``xlmrxl.pooling``, the one
  default shared with ``xlmrxl corpus embed`` and ``pipeline("feature-extraction", pooling="auto")``.
- ``classify`` (a sequence-classification checkpoint): ``{"label", "score", "scores": {label: probability}}``
  (softmax; sigmoid for ``multi_label_classification`` or a single label).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch

from .parsing import parse_device, parse_dtype
from .pipelines import pipeline
from .pooling import AUTO, resolve_pooling
from .pooling import HELP as POOLING_HELP
from .progress import progress_bar

CHUNK_BATCHES = 16


def add_parsers(sub: Any, run_opts: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``fill-mask``, ``embed`` and ``classify`` subcommands."""

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("text", nargs="?", default=None, help="input text; omit (or -) to read one input per line")
        sp.add_argument("--model", required=True, help="checkpoint directory (config.json, weights, tokenizer)")
        sp.add_argument("--batch-size", type=int, default=8)
        sp.add_argument("--json", action="store_true", help="one JSON object per input (errors: {line, error})")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        sp.add_argument("--progress", action="store_true", help="a progress bar even when stderr is not a terminal")
        run_opts(sp)

    fm = sub.add_parser("fill-mask", help="predict the <mask> token(s) of each input")
    common(fm)
    fm.add_argument("--top-k", type=int, default=5)
    fm.add_argument("--targets", default=None, help="comma-separated candidate words to score instead")
    em = sub.add_parser("embed", help="sentence embeddings (or token states) of each input")
    common(em)
    em.add_argument(
        "--pooling", default=AUTO, choices=(AUTO, "cls", "mean", "none"), help=POOLING_HELP + "; none: token states"
    )
    em.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    cl = sub.add_parser("classify", help="the label and scores of each input (a sequence-classification checkpoint)")
    common(cl)


def _lines(text: str | None) -> list[tuple[int, str | None, str | None]]:
    """``(line number, text, error)`` of each input: the argument, or each non-empty stdin line."""
    if text is not None and text != "-":
        return [(1, text, None)]
    raw = getattr(sys.stdin, "buffer", None)
    out = []
    for n, line in enumerate(raw if raw is not None else sys.stdin, 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.append((n, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
        line = line.rstrip("\r\n")
        if line.strip():
            out.append((n, line, None))
    if not out:
        raise ValueError("no input: pass TEXT, or one input per line on stdin")
    return out


def _run(
    args: argparse.Namespace,
    compute: Callable[[list[str]], list[Any]],
    tokenizer: Any,
    limit: int,
    write_ok,
    write_error,
    validate: Callable[[str], str | None] | None = None,
) -> int:
    """Compute every good line (chunk by chunk, a failed chunk line by line) and write records in input order."""
    items = _lines(args.text)
    from_stdin = args.text is None or args.text == "-"
    enabled = False if args.quiet else (True if args.progress else None)
    bar = progress_bar(len(items), f"xlmrxl {args.command}", "line", enabled if from_stdin else False)
    failed = []

    def checked(n: int, text: str | None, error: str | None) -> str | None:
        if error is None and text is not None:
            length = len(tokenizer(text, return_attention_mask=False)["input_ids"])
            if length > limit:
                error = f"{length} tokens; the model takes at most {limit}: shorten the line"
            elif validate is not None:
                error = validate(text)
        return error

    chunk = max(1, args.batch_size) * CHUNK_BATCHES
    try:
        for start in range(0, len(items), chunk):
            part = [(n, t, checked(n, t, e)) for n, t, e in items[start : start + chunk]]
            good = [(n, t) for n, t, e in part if e is None]
            results: dict[int, Any] = {}
            errors = {n: e for n, _, e in part if e is not None}
            try:
                results = dict(zip([n for n, _ in good], compute([t for _, t in good]))) if good else {}
            except Exception:
                if not from_stdin:
                    raise
                for n, t in good:  # find the bad lines: each alone
                    try:
                        results[n] = compute([t])[0]
                    except Exception as one:
                        errors[n] = f"{type(one).__name__}: {one}" if not str(one) else str(one)
            if errors and not from_stdin:
                raise ValueError(next(iter(errors.values())))
            for n, t, _ in part:
                if n in errors:
                    failed.append(n)
                    sys.stderr.write(f"xlmrxl {args.command}: line {n}: {errors[n]}\n")
                    write_error(n, t, errors[n])
                else:
                    write_ok(n, t, results[n])
            sys.stdout.flush()
            bar.update(len(part))
    finally:
        bar.close()
    if failed:
        shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
        sys.stderr.write(f"xlmrxl {args.command}: {len(failed)} of {len(items)} lines failed (line {shown})\n")
        return 1
    return 0


def _error_json(n: int, text: str | None, error: str) -> None:
    sys.stdout.write(json.dumps({"line": n, "input": text, "error": error}, ensure_ascii=False) + "\n")


def _limit(model: Any) -> int:
    cfg = model.config
    return int(cfg.max_position_embeddings) - int(cfg.pad_token_id) - 1  # positions start after the padding index


def cmd_fill_mask(args: argparse.Namespace) -> int:
    """``xlmrxl fill-mask``."""
    pipe = pipeline(
        "fill-mask",
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        top_k=args.top_k,
        batch_size=args.batch_size,
    )
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None

    def compute(texts: list[str]) -> list[Any]:
        res = pipe(texts, targets=targets, progress=False) if targets else pipe(texts, progress=False)
        return [res] if len(texts) == 1 else res  # the pipeline unwraps a list of one, as transformers' does

    def ok(n: int, text: str, res: Any) -> None:
        out = sys.stdout
        if args.json:
            out.write(json.dumps({"input": text, "predictions": res}, ensure_ascii=False) + "\n")
            return
        out.write(f"{text}\n")
        groups = [res] if res and isinstance(res[0], dict) else res
        for g, preds in enumerate(groups):
            if len(groups) > 1:
                out.write(f"  mask {g + 1}:\n")
            for p in preds:
                out.write(f"  {p['score']:.4f}  {p['token_str']!r:<16} {p['sequence']}\n")

    def bad(n: int, text: str | None, error: str) -> None:
        if args.json:
            _error_json(n, text, error)
        else:
            sys.stdout.write(f"{text if text is not None else ''}\n  error (line {n}): {error}\n")

    mask = pipe.tokenizer.mask_token

    def validate(text: str) -> str | None:
        return None if mask in text else f"no {mask} token: put {mask} where a word should be predicted"

    return _run(args, compute, pipe.tokenizer, _limit(pipe.model), ok, bad, validate)


def cmd_embed(args: argparse.Namespace) -> int:
    """``xlmrxl embed``."""
    pooling, normalize = (
        (None, args.normalize) if args.pooling == "none" else resolve_pooling(args.pooling, args.model, args.normalize)
    )
    pipe = pipeline(
        "feature-extraction",
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        pooling=pooling,
        normalize=normalize,
        batch_size=args.batch_size,
    )

    def compute(texts: list[str]) -> list[Any]:
        return list(pipe(texts, progress=False))  # the bar is over the lines (_run)

    def ok(n: int, text: str, e: torch.Tensor) -> None:
        rows = e.tolist()
        values = [[round(float(v), 6) for v in r] for r in rows] if e.dim() == 2 else [round(float(v), 6) for v in rows]
        if args.json:
            rec = {"input": text, "pooling": pooling or "none", "shape": list(e.shape), "embedding": values}
            sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(json.dumps(values) + "\n")

    def bad(n: int, text: str | None, error: str) -> None:
        _error_json(n, text, error) if args.json else sys.stdout.write(json.dumps({"line": n, "error": error}) + "\n")

    return _run(args, compute, pipe.tokenizer, _limit(pipe.model), ok, bad)


def cmd_classify(args: argparse.Namespace) -> int:
    """``xlmrxl classify``."""
    from .modeling import XLMRobertaXLForSequenceClassification
    from .tokenizer import XLMRobertaTokenizer

    model = XLMRobertaXLForSequenceClassification.from_pretrained(
        args.model, dtype=parse_dtype(args.dtype), device=parse_device(args.device), backend=args.backend or "auto"
    ).eval()
    tok = XLMRobertaTokenizer.from_pretrained(args.model)
    cfg = model.config
    labels = [cfg.id2label.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]
    multi = cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1
    dev = next(model.parameters()).device

    def compute(texts: list[str]) -> list[Any]:
        out = []
        for s in range(0, len(texts), max(1, args.batch_size)):
            enc = tok(texts[s : s + args.batch_size], padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev)).logits
            probs = torch.sigmoid(logits.float()) if multi else logits.float().softmax(-1)
            for p in probs.cpu().tolist():
                best = max(range(len(p)), key=p.__getitem__)
                out.append({"label": labels[best], "score": p[best], "scores": dict(zip(labels, p))})
        return out

    def ok(n: int, text: str, res: dict) -> None:
        if args.json:
            sys.stdout.write(json.dumps({"input": text, **res}, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(f"{res['label']}\t{res['score']:.4f}\t{text}\n")

    def bad(n: int, text: str | None, error: str) -> None:
        _error_json(n, text, error) if args.json else sys.stdout.write(f"error (line {n}): {error}\t{text or ''}\n")

    return _run(args, compute, tok, _limit(model), ok, bad)
