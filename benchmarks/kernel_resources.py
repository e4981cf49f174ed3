"""Registers, spills and shared memory of every kernel binary Triton compiled on this machine (its cache).

    python -m benchmarks.kernel_resources [--cache DIR] [--out DIR]

Run after the benchmarks on a GPU (``benchmarks/lease.sh`` does): the binaries in Triton's cache
(``TRITON_CACHE_DIR``, default ``~/.triton/cache``) are exactly what ran, with the runtime's own specialisation, so
this is the ground truth that the ahead-of-time sweep (``benchmarks/compile_sm90.py``) can only approximate.
Reads each ``<kernel>.json`` (warps, stages, shared memory, target) and its ``.cubin`` through Triton's bundled
``cuobjdump -res-usage`` (registers, stack = spill bytes). Writes ``kernel_resources.json`` / ``.md`` to ``--out``
(default ``benchmarks/results/<device>/``). On a machine with an empty cache it writes an empty table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path

from benchmarks import harness


def _cuobjdump() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return tool if os.path.exists(tool) else None


def scan(cache: Path) -> list[dict]:
    tool = _cuobjdump()
    rows = []
    for meta_file in sorted(cache.glob("*/*.json")):
        if meta_file.name.startswith("__grp__"):
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or "name" not in meta:
            continue
        row = {
            "kernel": meta["name"],
            "warps": meta.get("num_warps"),
            "stages": meta.get("num_stages"),
            "shared": meta.get("shared"),
            "target": str((meta.get("target") or {}).get("arch", "")),
            "constants": {k: v for k, v in (meta.get("constants") or {}).items()} if isinstance(
                meta.get("constants"), dict) else None,
        }  # fmt: skip
        cubin = meta_file.with_suffix(".cubin")
        if tool and cubin.exists():
            out = subprocess.run([tool, "-res-usage", str(cubin)], capture_output=True, text=True).stdout
            for field in ("REG", "STACK"):
                m = re.search(rf"{field}:(\d+)", out)
                row[field.lower()] = int(m.group(1)) if m else None
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_cache = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    p.add_argument("--cache", type=Path, default=Path(default_cache), help="Triton's cache directory")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    args = p.parse_args(argv)
    rows = scan(args.cache) if args.cache.exists() else []
    cols = ["kernel", "warps", "stages", "reg", "stack", "shared", "target"]
    out = harness.write_results("kernel_resources", rows, columns=cols, out_dir=args.out)
    spilled = [r for r in rows if r.get("stack")]
    print(f"{len(rows)} binaries in {args.cache}, {len(spilled)} with spills; wrote {out}")
    for r in spilled:
        print(f"  spill: {r['kernel']} w{r['warps']} s{r['stages']}: {r['stack']} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
