"""Shipping measured choices: ``python -m xlmrxl_kernels.tuning merge CACHE.json`` copies a tuning cache's
choices (as ``benchmarks/lease.sh`` leaves it) into ``tuned_defaults.py``; ``show`` prints this machine's cache."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .tuned_defaults import TUNED_DEFAULTS
from .tuning import default_cache_path


def merge_into_defaults(cache_file: str | os.PathLike, defaults_file: str | os.PathLike | None = None) -> dict:
    """Copy the measured choices of a tuning cache (as ``benchmarks/lease.sh`` leaves it) into
    ``tuned_defaults.py``, one entry per device name (the newest versions' choice wins); returns the new table."""
    data = json.loads(Path(cache_file).read_text())
    table = {dev: dict(keys) for dev, keys in TUNED_DEFAULTS.items()}
    for ctx in sorted(data.get("entries", {})):
        dev = ctx.split("|", 1)[0]
        for text, rec in data["entries"][ctx].items():
            if isinstance(rec, dict) and "choice" in rec:
                table.setdefault(dev, {})[text] = rec["choice"]
    target = Path(defaults_file) if defaults_file else Path(__file__).with_name("tuned_defaults.py")
    src = target.read_text()
    head = src[: src.index("TUNED_DEFAULTS")]
    body = json.dumps({d: dict(sorted(k.items())) for d, k in sorted(table.items())}, indent=4)
    body = body.replace("true", "True").replace("false", "False").replace("null", "None")
    target.write_text(f"{head}TUNED_DEFAULTS: dict[str, dict[str, str]] = {body}\n")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xlmrxl_kernels.tuning merge CACHE.json`` (ship measured choices) or ``show`` (print the cache)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m xlmrxl_kernels.tuning", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="copy a tuning cache's choices into xlmrxl_kernels/tuned_defaults.py")
    m.add_argument("cache", type=Path)
    m.add_argument("--defaults", type=Path, default=None, help="the file to rewrite (default: the shipped one)")
    sub.add_parser("show", help="print the tuning cache of this machine")
    args = p.parse_args(argv)
    if args.cmd == "merge":
        table = merge_into_defaults(args.cache, args.defaults)
        print(f"{sum(len(v) for v in table.values())} choices for {len(table)} device(s)")
    else:
        path = default_cache_path()
        print(path)
        print(path.read_text() if path.exists() else "(no cache yet)")
    return 0
