"""Compile every kernel variant for an H100 (sm_90) ahead of time, without a GPU, and report registers and spills.

    python -m benchmarks.compile_sm90 [--quick | --lease] [--out DIR] [--jobs N] [--deadline-s S] [--limit N]

Uses Triton's own compiler and bundled ptxas / cuobjdump (``triton.compile`` with ``GPUTarget("cuda", 90, 32)``):
every autotune config of every kernel, both half dtypes, each head dim / mask / varlen / causal / split option and
GEMM epilogue the launchers can produce. Writes ``compile_sm90.json`` and ``compile_sm90.md`` (one row per
variant: registers per thread, stack bytes (spills), shared memory) to ``--out`` (default
``benchmarks/results/sm90-aot/``). Exit status 1 if a variant fails to compile. Must run *without*
``TRITON_INTERPRET`` (it is removed from the environment here). What it cannot see: timing, occupancy in practice.

``--lease`` is the lease's precompile step (``benchmarks/lease.sh``): bf16 only (what the lease times), every
variant the timed benchmarks can launch, ordered so what the end-to-end step needs first compiles first (head dim 80
attention, the GEMM epilogues, add + LayerNorm at 2560; then int4; then head dim 128, decode, the rest). The
binaries land in Triton's on-disk cache (``TRITON_CACHE_DIR``), keyed as the runtime keys them, so the steps that
follow load instead of compiling. ``--deadline-s`` stops starting new compiles after that many seconds and records
the variants it did not reach (``planned`` vs ``variants`` in the JSON): a step cut short still writes its table.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # real JIT functions (before any kernel module is imported)

RESULTS = Path(__file__).resolve().parent / "results" / "sm90-aot"
# strides that are 1 for contiguous inputs (Triton specialises an integer argument equal to 1 as a constant)
UNIT_STRIDES = ("stride_xk", "stride_wk", "stride_rn", "stride_yn", "stride_qk", "stride_sn")


def _tool() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _compile(job: tuple) -> dict:
    """Compile one variant: (name, module, kernel attr, arg types, constexprs, warps, stages) -> result row."""
    name, module, attr, types, consts, warps, stages = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(module), attr)
    fn = fn.fn if hasattr(fn, "configs") else fn  # unwrap an Autotuner
    # what Triton's runtime specialisation gives for the XL shapes with contiguous tensors: unit strides become
    # constexpr 1, every other integer that may be specialised is a multiple of 16 (2560, 10240, 80 x 32, ...),
    # pointers are 16-byte aligned; do_not_specialize integers (token counts) stay plain i32
    consts = {**{n: 1 for n in UNIT_STRIDES if n in fn.arg_names}, **consts}
    sig = {n: types.get(n, "i32") for n in fn.arg_names}
    sig.update({k: "constexpr" for k in consts})
    dns = {p.name for p in fn.params if p.do_not_specialize}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if n not in dns and n not in consts and (sig[n].startswith("*") or sig[n] == "i32")
    }
    row = {"variant": name, "warps": warps, "stages": stages}
    t0 = time.perf_counter()
    try:
        k = triton.compile(
            ASTSource(fn, sig, consts, attrs),
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=warps, num_stages=stages),
        )
    except Exception as exc:
        row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row["shared"] = k.metadata.shared
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    try:
        out = subprocess.run([_tool(), "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    for field in ("REG", "STACK", "LOCAL"):
        m = re.search(rf"{field}:(\d+)", out)
        row[field.lower()] = int(m.group(1)) if m else None
    return row


def _attn_types(dt: str) -> dict:
    return dict(
        Q="*" + dt, K="*" + dt, V="*" + dt, Out="*" + dt, Mask="*u8", OPart="*fp32", LPart="*fp32", CuQ="*i32",
        CuK="*i32", qk_scale="fp32",
    )  # fmt: skip


def jobs(quick: bool) -> list[tuple]:
    A = importlib.import_module("xlmrxl_kernels.flash")
    G = importlib.import_module("xlmrxl_kernels.gemm")
    L = importlib.import_module("xlmrxl_kernels.norm")
    I4 = importlib.import_module("xlmrxl_kernels.int4")
    out = []
    dts = ["bf16"] if quick else ["bf16", "fp16"]
    heads = [80] if quick else [64, 80, 128]
    # attention, tiled: every config the pruner keeps for the head dim
    for dt, d, (varlen, mask), causal, splits in itertools.product(
        dts, heads, [(False, True), (True, False), (False, False)], [False, True], [1, 2]
    ):
        if quick and (causal or splits > 1):
            continue
        d0, d1 = A._head_dim_blocks(d)
        named = {"BLOCK_D0": d0, "BLOCK_D1": d1, "SEQ_Q_KEY": 4096}
        for c in A._prune_tiled(A._NARROW + A._WIDE[1:], named):
            bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            consts = dict(
                HEAD_DIM=d, BLOCK_D0=d0, BLOCK_D1=d1, PAD_D0=d0 > d, PAD_D1=d1 > 0 and d0 + d1 > d, IS_VARLEN=varlen,
                HAS_MASK=mask, IS_CAUSAL=causal, NUM_SPLITS=splits, DOT_PRECISION="tf32", DOT_F32=False, BLOCK_M=bm,
                BLOCK_N=bn,
            )  # fmt: skip
            tag = f"attn tiled {dt} D{d} {'varlen' if varlen else 'mask' if mask else 'dense'}"
            tag += f"{' causal' if causal else ''} split{splits} {bm}x{bn}"
            out.append((tag, A.__name__, "_attn_fwd_kernel", _attn_types(dt), consts, c.num_warps, c.num_stages))
    # attention, decode + combine
    for dt, d, (varlen, mask), causal, splits in itertools.product(
        dts, heads, [(False, True), (True, False)], [False, True], [1, 8]
    ):
        bd = 1 << (d - 1).bit_length()
        p = A._decode_launch_params(bd)
        consts = dict(HEAD_DIM=d, BLOCK_D=bd, IS_VARLEN=varlen, HAS_MASK=mask, IS_CAUSAL=causal, NUM_SPLITS=splits,
                      BLOCK_N=p["BLOCK_N"])  # fmt: skip
        tag = f"attn decode {dt} D{d} {'varlen' if varlen else 'mask'}{' causal' if causal else ''} split{splits}"
        out.append((tag, A.__name__, "_attn_decode_kernel", _attn_types(dt), consts, p["num_warps"], p["num_stages"]))
    for d in heads:
        bd = 1 << (d - 1).bit_length()
        types = dict(OPart="*fp32", LPart="*fp32", Out="*bf16")
        consts = dict(HEAD_DIM=d, BLOCK_D=bd, NUM_SPLITS=8)
        out.append((f"attn combine D{d}", A.__name__, "_attn_combine_kernel", types, consts, 4, 1))
    # GEMM + epilogue: every config, every epilogue; the split-K launch and its finalize
    for dt, epi in itertools.product(dts, [0, 1, 2]):
        types = dict(x_ptr="*" + dt, w_ptr="*" + dt, b_ptr="*" + dt, r_ptr="*" + dt, y_ptr="*" + dt, ws_ptr="*fp32")
        base = dict(HAS_BIAS=epi != 0, EPILOGUE=epi, IEEE=False, EVEN_K=True)
        for c in G._CONFIGS:
            kw = c.kwargs
            consts = dict(base, SPLIT_K=1, **kw)
            tag = f"linear {dt} epi{epi} {kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{c.num_warps} s{c.num_stages}"
            out.append((tag, G.__name__, "_linear_epilogue_kernel", types, consts, c.num_warps, c.num_stages))
        bm, bn, bk = G._SPLIT_TILE
        for c in G._SPLIT_CONFIGS:
            consts = dict(base, SPLIT_K=4, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1)
            tag = f"linear split-K {dt} epi{epi} {bm}x{bn}x{bk} w{c.num_warps} s{c.num_stages}"
            out.append((tag, G.__name__, "_linear_epilogue_kernel", types, consts, c.num_warps, c.num_stages))
        consts = dict(SPLIT_K=4, HAS_BIAS=epi != 0, EPILOGUE=epi, BLOCK=1024)
        out.append((f"linear finalize {dt} epi{epi}", G.__name__, "_linear_finalize_kernel", types, consts, 4, 1))
    # int4: throughput tiles and the latency launch
    for dt, gelu in itertools.product(dts, [False, True]):
        types = dict(x_ptr="*" + dt, q_ptr="*u8", s_ptr="*" + dt, z_ptr="*" + dt, b_ptr="*" + dt, y_ptr="*" + dt,
                     ws_ptr="*fp32")  # fmt: skip
        base = dict(GROUP_SIZE=128, HAS_BIAS=True, GELU=gelu, IEEE=False, BLOCK_KP=64)
        for c in I4._TILED_CONFIGS:
            kw = c.kwargs
            tag = f"int4 tiled {dt}{' gelu' if gelu else ''} {kw['BLOCK_M']}x{kw['BLOCK_N']} w{c.num_warps}"
            consts = dict(base, SPLIT_K=1, **kw)
            out.append((tag, I4.__name__, "_int4_matmul_kernel", types, consts, c.num_warps, c.num_stages))
        for bm, splits, c in itertools.product([16, 64], [1, 8], I4._SMALL_CONFIGS):
            consts = dict(base, SPLIT_K=splits, BLOCK_M=bm, BLOCK_N=I4._SMALL_BLOCK_N, GROUP_M=1)
            tag = f"int4 small {dt}{' gelu' if gelu else ''} M{bm} split{splits} s{c.num_stages}"
            out.append((tag, I4.__name__, "_int4_matmul_kernel", types, consts, c.num_warps, c.num_stages))
        consts = dict(SPLIT_K=8, HAS_BIAS=True, GELU=gelu, BLOCK=1024)
        out.append((f"int4 finalize {dt}{' gelu' if gelu else ''}", I4.__name__, "_int4_finalize_kernel", types,
                    consts, 4, 1))  # fmt: skip
    # add + LayerNorm: the warp counts the pruner keeps at XL / XXL widths
    for dt, n in itertools.product(dts, [2560, 4096, 10240] if not quick else [2560]):
        types = {**{c: "*" + dt for c in "XRYH"}, "W": "*" + dt, "B": "*" + dt, "eps": "fp32"}
        bn = 1 << (n - 1).bit_length()
        bm = max(1, L._TILE // bn)
        import triton

        warps = [triton.Config({}, num_warps=w) for w in (8, 4, 16, 32)]  # the GPU list (not the interpreter's)
        for c in L._prune_warps(warps, {}, BLOCK_M=bm, BLOCK_N=bn):
            consts = dict(HAS_RES=True, HAS_W=True, HAS_B=True, BLOCK_M=bm, BLOCK_N=bn)
            tag = f"add_layernorm {dt} N{n} w{c.num_warps}"
            out.append((tag, L.__name__, "_add_layernorm_kernel", types, consts, c.num_warps, 1))
        consts = dict(HAS_RES=True, HAS_W=True, HAS_B=True, BLOCK_N=4096)
        out.append((f"add_layernorm loop {dt}", L.__name__, "_add_layernorm_loop_kernel", types, consts, 8, 1))
    return out


def _lease_rank(job: tuple) -> int:
    """Compile order for the lease: what bench_e2e's forward launches first, then int4, then the rest."""
    name = job[0]
    if ("D80" in name and ("varlen" in name or "mask" in name) and "tiled" in name) or name.startswith("linear"):
        return 0
    if name.startswith("add_layernorm") and ("N2560" in name or "loop" in name):
        return 0
    if name.startswith("int4"):
        return 1
    if "tiled" in name and "D128" in name:
        return 2
    return 3


def lease_jobs() -> list[tuple]:
    """bf16 variants at head dims 80 and 128 (no causal: the encoder), in the lease's priority order."""
    todo = [j for j in jobs(quick=False) if "fp16" not in j[0] and "D64" not in j[0] and "causal" not in j[0]]
    return sorted(todo, key=_lease_rank)  # stable: the sweep's own order within a rank


def _run_jobs(todo: list[tuple], n_jobs: int, deadline_s: float | None, t0: float) -> list[dict]:
    """Compile ``todo`` (in order) on ``n_jobs`` processes; past the deadline nothing new starts."""

    def late() -> bool:
        return deadline_s is not None and time.perf_counter() - t0 > deadline_s

    rows: list[dict] = []
    if n_jobs <= 1:
        for i, j in enumerate(todo):
            if late():
                break
            rows.append(_compile(j))
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{len(todo)}", flush=True)
        return rows
    from concurrent.futures import FIRST_COMPLETED, wait

    with ProcessPoolExecutor(n_jobs) as pool:
        pending, it = set(), iter(todo)
        for j in itertools.islice(it, 2 * n_jobs):
            pending.add(pool.submit(_compile, j))
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            rows += [f.result() for f in done]
            if not late():
                for j in itertools.islice(it, len(done)):
                    pending.add(pool.submit(_compile, j))
            elif not pending:
                break
        pool.shutdown(cancel_futures=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="bf16, head dim 80, no causal/split variants")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--jobs", type=int, default=1, help="parallel compiles")
    p.add_argument("--only", default=None, help="only variants whose name contains this text")
    p.add_argument("--lease", action="store_true", help="bf16, what the lease times, in its priority order")
    p.add_argument("--deadline-s", type=float, default=None, help="start no compile after this many seconds")
    p.add_argument("--limit", type=int, default=None, help="compile at most this many variants (a rehearsal)")
    args = p.parse_args(argv)
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        print("this Triton has no NVIDIA backend: nothing to compile")
        return 0
    todo = [j for j in (lease_jobs() if args.lease else jobs(args.quick)) if args.only is None or args.only in j[0]]
    todo = todo[: args.limit] if args.limit is not None else todo
    print(f"{len(todo)} variants", flush=True)
    t0 = time.perf_counter()
    rows = _run_jobs(todo, args.jobs, args.deadline_s, t0)
    import triton

    args.out.mkdir(parents=True, exist_ok=True)
    failed = [r for r in rows if "error" in r]
    spilled = [r for r in rows if r.get("stack") or r.get("local")]
    meta = {"triton": triton.__version__, "target": "sm_90", "planned": len(todo), "variants": len(rows),
            "failed": len(failed), "spilled": len(spilled), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    (args.out / "compile_sm90.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"### sm_90 ahead-of-time compile (triton {triton.__version__})",
        "",
        f"{len(rows)} of {len(todo)} planned variants compiled in {meta['seconds']} s, {len(failed)} failed, "
        f"{len(spilled)} with spills (stack or local bytes)",
        "",
        "| variant | warps | stages | regs | stack | shared | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['warps']} | {r['stages']} | {r.get('reg', '')} | {r.get('stack', '')} | "
            f"{r.get('shared', '')} | {r.get('error', '')} |"
        )
    (args.out / "compile_sm90.md").write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} variants, {len(failed)} failed, {len(spilled)} spill; wrote {args.out}")
    for r in spilled:
        print(f"  spill: {r['variant']} w{r['warps']} s{r['stages']}: stack {r.get('stack')} local {r.get('local')}")
    for r in failed:
        print(f"  FAILED: {r['variant']}: {r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
