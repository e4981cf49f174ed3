"""The implementation choices measured on this device, as a table: what was chosen per op and shape bucket, by how
much it beat the best PyTorch candidate and the slowest one, and how close it is to the op's hardware floor.

    python -m benchmarks.bench_choices [--cache FILE] [--out DIR]

Reads the tuning cache the earlier lease steps filled (``XLMRXL_TUNING_CACHE``, or ``--cache``): for each device
context, ``{key: {"choice": name, "ms": {candidate: ms}}}``. Writes ``choices.json`` / ``choices.md``. Columns:
``x_vs_best_pytorch`` = best non-Triton candidate's time / chosen time (> 1: our kernel won; 1: a PyTorch candidate
was chosen); ``x_vs_slowest`` = slowest candidate / chosen; ``pct_of_roofline`` (GEMM, add + LayerNorm, int4 only:
their shape keys carry the sizes; token counts are bucketed up to a power of two, so it is an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmarks import harness, roofline


def _cost(key_text: str) -> roofline.Cost | None:
    """The op's cost from its shape key (``op|rows|...``), where the key holds the sizes; else None."""
    parts = key_text.split("|")
    op = parts[0]
    try:
        if op in ("linear_gelu", "linear_residual"):
            M, N, K = (int(p) for p in parts[1:4])
            return roofline.linear(M, K, N, residual=op == "linear_residual")
        if op == "add_layernorm":
            return roofline.add_layernorm(int(parts[1]), int(parts[2]))
        if op == "int4_matmul":
            M, N, K, group = (int(p) for p in parts[1:5])
            return roofline.int4_linear(M, K, N, group=group, bias=False)
    except (ValueError, IndexError):
        return None
    return None


def _by_time(kv: tuple) -> float:
    return kv[1]


def rows_from_cache(data: dict, peak: roofline.Peak | None) -> list[dict]:
    rows = []
    for context, entries in sorted((data.get("entries") or {}).items()):
        for key, rec in sorted(entries.items()):
            if not isinstance(rec, dict):
                continue
            timings = {k: v for k, v in (rec.get("ms") or {}).items() if isinstance(v, (int, float))}
            chosen = rec.get("choice")
            t = timings.get(chosen)
            pytorch = [v for k, v in timings.items() if not k.startswith("triton")]
            rows.append(
                {
                    "context": context,
                    "op": key.split("|")[0],
                    "key": key,
                    "chosen": chosen,
                    "chosen_ms": t,
                    "x_vs_best_pytorch": min(pytorch) / t if t and pytorch else None,
                    "x_vs_slowest": max(timings.values()) / t if t and timings else None,
                    "pct_of_roofline": harness.pct_of_roofline(t, _cost(key), peak),
                    "candidates_ms": ", ".join(f"{k} {v:.4g}" for k, v in sorted(timings.items(), key=_by_time)),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=None, help="tuning cache (default XLMRXL_TUNING_CACHE)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    p.add_argument("--quick", action="store_true", help="accepted for symmetry with the other benchmarks")
    p.add_argument("--tiny", action="store_true", help="accepted for symmetry (the table is read, not measured)")
    args = p.parse_args(argv)
    path = args.cache or (Path(os.environ["XLMRXL_TUNING_CACHE"]) if os.environ.get("XLMRXL_TUNING_CACHE") else None)
    data = {}
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
    rows = rows_from_cache(data, harness.peaks())
    cols = ["op", "key", "chosen", "x_vs_best_pytorch", "x_vs_slowest", "pct_of_roofline", "chosen_ms"]
    cols += ["candidates_ms", "context"]
    note = {"cache": str(path), "note": "no measured choices (CPU, or no step tuned)" if not rows else ""}
    out = harness.write_results("choices", rows, columns=cols, extra=note, out_dir=args.out)
    print(f"choices: {len(rows)} measured choices from {path}; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
