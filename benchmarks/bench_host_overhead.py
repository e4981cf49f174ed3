"""Host overhead of the fast path per layer and per forward, with only the innermost kernel launch stubbed.

Why: a forward on a small batch is host-bound on a GPU unless CUDA graphs replay it (target: at most 60 us
of host time per layer and 300 us fixed per forward). The model: 36 layers of the XL architecture at hidden 80 (one
head of 80, FFN 320, fp32), ``backend="triton"``, CUDA graphs off (the eager packed path), one thread.

Method (``innermost``): every Python line between ``model(**batch)`` and the kernel runs for real: our code,
Triton's autotuner (``Autotuner.run`` where a launcher still calls it) and its JIT dispatch (``kernel[grid]``), and
every torch op (embeddings, packing, the fused QKV ``F.linear``, allocations). Only the innermost launch is a no-op:
on CPU the interpreter's ``InterpretedFunction.run`` (``TRITON_INTERPRET=1``); on a GPU the compiled kernel's
launcher (``CompiledKernel.run``), when this Triton exposes it, else nothing is stubbed (``real``: the GPU work is
then included). Timed as wall-clock per forward; reported as the median per forward divided by the layers, with the
fixed part per forward (intercept between 2 and 36 layers) and the slope per layer.

``whole-launch`` is the method of the figures committed before (Triton's whole launch path stubbed:
``kernel[grid]`` returns a no-op), shown next to it for comparison: the difference is Triton's own dispatch Python.

    python -m benchmarks.bench_host_overhead [--rep 200] [--quick] [--out DIR]

Writes ``host_overhead.{json,md}`` under ``benchmarks/results/<device>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # the kernels' Python runs on CPU tensors; set before Triton is imported
os.environ.setdefault("XLMRXL_POISON", "0")

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import harness
else:
    from . import harness

CONFIG = dict(
    vocab_size=1000,
    hidden_size=80,
    num_attention_heads=1,  # head dim 80, as XL
    intermediate_size=320,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
LAYERS = 36
SHALLOW = 2  # the second depth, for the fixed part per forward
INPUTS = {"1x16": [16], "4x32 mixed": [32, 25, 17, 9]}
TARGET_US_PER_LAYER = 60
TARGET_US_FIXED = 300


def _inputs(lengths: list[int]):
    g = torch.Generator().manual_seed(0)
    S = max(lengths)
    ids = torch.randint(3, CONFIG["vocab_size"], (len(lengths), S), generator=g)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids.masked_fill(mask == 0, CONFIG["pad_token_id"])
    return ids, (None if all(n == S for n in lengths) else mask)


def _build(layers: int, device: str):
    from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLModel

    torch.manual_seed(0)
    model = XLMRobertaXLModel(XLMRobertaXLConfig(num_hidden_layers=layers, **CONFIG), add_pooling_layer=False)
    model = model.to(device).eval()
    model.set_backend("triton")
    model.set_cuda_graphs(False)
    return model


def _noop(*args, **kwargs):
    return None


@contextlib.contextmanager
def _patched(pairs):
    saved = [(obj, name, obj.__dict__.get(name)) for obj, name, _ in pairs]
    for obj, name, value in pairs:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, old in saved:
            if old is None:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


def _innermost(device: str):
    """The innermost launch stubbed (module docstring); returns (context factory, what was stubbed)."""
    if device == "cpu":
        from triton.runtime.interpreter import InterpretedFunction

        return (lambda: _patched([(InterpretedFunction, "run", _noop)])), "InterpretedFunction.run"
    try:
        from triton.compiler.compiler import CompiledKernel

        if isinstance(CompiledKernel.__dict__.get("run"), property):
            return (lambda: _patched([(CompiledKernel, "run", property(lambda self: _noop))])), "CompiledKernel.run"
    except ImportError:  # pragma: no cover - depends on the Triton version
        pass
    return contextlib.nullcontext, "nothing (real launches)"


def _whole_launch():
    """Triton's whole launch path stubbed: ``kernel[grid]`` returns a no-op (the method of the older figures)."""
    from triton.runtime import interpreter, jit

    def getitem(self, grid):
        return _noop

    return _patched([(jit.KernelInterface, "__getitem__", getitem), (interpreter.InterpretedFunction, "__getitem__",
                                                                      getitem)])  # fmt: skip


def _time(models: dict, ids, mask, rep: int, warmup: int, device: str) -> tuple[dict, dict]:
    """({layers: [wall us per forward]}, {layers: [thread CPU us per forward]}), depths interleaved call by call
    (machine noise hits both alike)."""
    wall = {L: [] for L in models}
    cpu = {L: [] for L in models}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for i in range(warmup + rep):
        for L, model in models.items():
            sync()
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            model(ids, attention_mask=mask)
            sync()
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            if i >= warmup:
                wall[L].append((t1 - t0) / 1e3)
                cpu[L].append((c1 - c0) / 1e3)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Host time per layer of xlmrxl's fast path, innermost launch stubbed.")
    ap.add_argument("--rep", type=int, default=200, help="timed forwards per depth and input (default 200)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer forwards (30)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    ap.add_argument("--tiny", action="store_true", help="4 layers, 3 forwards (a script check)")
    args = ap.parse_args(argv)
    rep = 3 if args.tiny else 30 if args.quick else args.rep
    deep = 4 if args.tiny else LAYERS
    name = "host_overhead_tiny_cpu" if args.tiny else "host_overhead"
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {L: _build(L, device) for L in (SHALLOW, deep)}
    inner, stubbed = _innermost(device)
    methods = {"innermost": inner, "whole-launch": _whole_launch}
    rows = []
    with torch.inference_mode():
        for kind, lengths in INPUTS.items():
            ids, mask = _inputs(lengths)
            ids = ids.to(device)
            mask = None if mask is None else mask.to(device)
            for model in models.values():
                model(ids, attention_mask=mask)  # real launches once: compiles, autotunes, binds every call site
            for method, ctx in methods.items():
                with ctx():
                    wall, cpu = _time(models, ids, mask, rep, args.warmup, device)
                for clock, times in (("wall", wall), ("thread-cpu", cpu)):
                    lo, hi = statistics.median(times[SHALLOW]), statistics.median(times[deep])
                    slope = (hi - lo) / (deep - SHALLOW)
                    rows.append(
                        dict(
                            input=kind,
                            method=method,
                            clock=clock,
                            us_per_forward_over_layers=hi / deep,
                            us_per_layer_slope=slope,
                            us_fixed_per_forward=lo - SHALLOW * slope,
                            us_forward_36=hi,
                            us_forward_2=lo,
                            target_us_per_layer=TARGET_US_PER_LAYER,
                            target_us_fixed=TARGET_US_FIXED,
                        )
                    )
    extra = dict(
        config=CONFIG,
        layers=deep,
        shallow=SHALLOW,
        inputs=INPUTS,
        rep=rep,
        threads=args.threads,
        timer="time.perf_counter_ns (wall clock) and time.thread_time_ns (this thread's CPU time), per forward",
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
        innermost_stub=stubbed,
        note=(
            "innermost: only the innermost launch stubbed (CPU: the interpreter's InterpretedFunction.run; GPU: the "
            "compiled kernel's launcher); Triton's autotuner and JIT dispatch and every torch op run. whole-launch: "
            "kernel[grid] stubbed (the older method). us_per_forward_over_layers = median forward / 36; slope and "
            "fixed: between 2 and 36 layers."
        ),
    )
    out = harness.write_results(name, rows, extra=extra, out_dir=args.out)
    with open(out / f"{name}.md", "a") as f:
        f.write(
            f"\nModel: {deep} layers, hidden 80 (one head of 80), FFN 320, fp32, backend='triton', CUDA graphs off, "
            f"{args.threads} thread(s), {rep} forwards per cell (median; `wall`: wall clock, `thread-cpu`: this "
            "thread's CPU time, which a loaded machine inflates less; load average at the end "
            f"{extra['load_average']}). `innermost`: only {stubbed} "
            "stubbed (Triton's autotuner and JIT dispatch, our code and every torch op run); `whole-launch`: "
            "Triton's `kernel[grid]` stubbed (the method of the older figures). Targets: <= "
            f"{TARGET_US_PER_LAYER} us per layer, <= {TARGET_US_FIXED} us fixed per forward.\n"
        )
    for r in rows:
        print(
            f"{r['input']:>11} {r['method']:>13} {r['clock']:>10}: {r['us_per_forward_over_layers']:7.1f} us/layer "
            "(forward / 36), "
            f"slope {r['us_per_layer_slope']:.1f} us/layer, fixed {r['us_fixed_per_forward']:.0f} us/forward"
        )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
