"""``xlmrxl corpus TASK --model M --input PATH --output DIR [--engine ray] ...``: ``xlmrxl.corpus.run`` from the shell.

    xlmrxl corpus embed --model /models/xlm-roberta-xl --input texts/ --output out/ --pooling mean --normalize
    xlmrxl corpus classify --model /models/xlmr-sentiment --input reviews.jsonl --output out/ --engine ray --workers 4
    xlmrxl corpus comet --model /models/xcomet-xl --input triples.parquet --output scores/ --columns src=source,mt=hyp

Prints the run's summary as one JSON object on stdout; the progress bar goes to stderr. Rerun the same command to
resume.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..pooling import HELP as POOLING_HELP

TASK_NAMES = ("embed", "classify", "fill-mask", "comet")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``corpus`` subcommand to the ``xlmrxl`` parser's subparsers."""
    p = sub.add_parser(
        "corpus",
        help="run a task over a whole corpus (parquet / jsonl / json / csv / tsv / text) into parquet blocks, "
        "resumable, local or Ray",
        description="Embed, classify, fill masks or score with COMET over every row of the input; rerun to resume.",
    )
    p.add_argument("task", choices=TASK_NAMES)
    p.add_argument("--model", required=True, help="checkpoint directory (a COMET checkpoint for comet)")
    p.add_argument(
        "--input",
        required=True,
        help="a .parquet, .jsonl (objects or strings per line), .json (one list), .csv / .tsv (with a header line) "
        "or text file (one text per line), a directory or a glob of them",
    )
    p.add_argument("--output", required=True, help="output directory (created; rerun with the same one to resume)")
    p.add_argument("--engine", default="local", choices=("local", "ray"))
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else one per node)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per Ray worker (default 1 when there are GPUs)")
    p.add_argument("--rows-per-block", type=int, default=10_000, help="rows per output block (default 10000)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="token budget of a batch (default 8192)")
    p.add_argument("--id-column", default="id", help="carried to the output when present (else <file>:<row> ids)")
    p.add_argument(
        "--text-column", default="text", help="parquet column, json key or csv / tsv header name of the text"
    )
    p.add_argument("--columns", default=None, help="role=column pairs, e.g. src=source,mt=hyp,ref=reference")
    p.add_argument("--truncate", action="store_true", help="cut rows longer than the model's maximum")
    p.add_argument("--pooling", default="auto", choices=("auto", "cls", "mean"), help=f"embed: {POOLING_HELP}")
    p.add_argument("--normalize", action="store_true", help="embed: L2-normalise")
    p.add_argument("--vector-dtype", default=None, choices=("float32", "float16"), help="embed: stored vector type")
    p.add_argument("--top-k", type=int, default=None, help="fill-mask: candidates per mask (default 5)")
    p.add_argument("--batch-size", type=int, default=None, help="comet: COMET's predict batch size (default 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-verify", action="store_true", help="on resume, check finished blocks by size only (not sha256)"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"))
    return p


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    out = {}
    for pair in text.split(","):
        role, sep, col = pair.partition("=")
        if not sep or not role.strip() or not col.strip():
            raise ValueError(f"--columns {text!r}: write role=column pairs separated by commas (src=source,mt=hyp)")
        out[role.strip()] = col.strip()
    return out


def main(args: argparse.Namespace) -> int:
    """Handler of ``xlmrxl corpus``: run, then print the summary as JSON."""
    from .api import run  # torch and the model code load only when a command runs (xlmrxl --help stays instant)

    options = {
        "pooling": args.pooling,
        "normalize": args.normalize or None,
        "vector_dtype": args.vector_dtype,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "truncate": args.truncate or None,
    }
    summary = run(
        args.task,
        args.model,
        args.input,
        args.output,
        engine=args.engine,
        id_column=args.id_column,
        text_column=args.text_column,
        columns=_columns(args.columns),
        max_batch_tokens=args.max_batch_tokens,
        dtype=args.dtype,
        device=args.device,
        rows_per_block=args.rows_per_block,
        workers=args.workers,
        num_gpus=args.num_gpus,
        backend=args.backend,
        progress=False if args.no_progress else True,
        verify=not args.no_verify,
        **{k: v for k, v in options.items() if v is not None},
    )
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0
