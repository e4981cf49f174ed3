"""Host overhead of the fast path: the project's Python per layer, with every kernel launch stubbed (runs on CPU).

Why: one short sequence on a GPU is host-bound (issue 11: ~230 us of Python per layer measured before, target
<= 50 us). This measures only the host side, so it runs anywhere: a small model of the XL architecture (hidden 320 =
4 heads of 80, FFN 1280, fp32) built through the public API, the fast route forced with a backend whose ops are
stubs (each returns a preallocated tensor of the right shape without computing) and ``F.linear`` stubbed the same
way (the fused QKV GEMM), so what is left is our Python, PyTorch's view/dispatch work, and the stubs' own calls.

Timed: ``model(input_ids[, attention_mask])`` under ``torch.inference_mode()``, one thread, for 1 sequence of 128
tokens (no mask) and 2 sequences (128 and 100 tokens, padded), timed as this thread's CPU time
(``time.thread_time_ns``: the CI machines are shared, and wall time there mostly measures the neighbours), at two
depths (L = 2 and 12; ``--tiny``: 1 and 3).
Per layer = the slope (t(L_hi) - t(L_lo)) / (L_hi - L_lo), so the fixed per-forward work (embeddings, packing,
mask checks, unpacking) is reported apart as the intercept. Modes, interleaved round-robin so machine noise hits
all alike:

- ``off``: ``model.set_cuda_graphs(False)``: the eager packed route (``xlmrxl.fast.stack.packed_stack``).
- ``emulate``: ``model.set_cuda_graphs("emulate")``: the CUDA-graph path without capture (static buffers, buckets,
  slicing) around the same layer stack: what the bucketing adds.
- ``graphs-replay-stub``: the same runner taking its graph branch with the captured stack replaced by nothing: the
  host work that remains per forward when a graph replays (add about 5-10 us for ``cudaGraphLaunch`` on a GPU).
- ``off+launchers``: ``off`` with xlmrxl_kernels' launchers running for real (argument checks, allocation,
  grids, the autotune-cache lookup) and only Triton's ``kernel[grid](...)`` stubbed: the project's whole Python
  per layer (still without Triton's own launch path and cuBLAS's, which need a GPU).

Also recorded: a differential cProfile (``off`` and ``off+launchers``, 2 sequences): per function, own time per
layer as the slope between the two depths (top 20) and the fixed per-forward part (top 10), so the host time can be
traced to functions. Written as ``host_overhead.{json,md}`` under
``benchmarks/results/<device>/`` (or ``--out``).

    python -m benchmarks.bench_host_overhead [--rep 400] [--tiny] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import harness
else:
    from . import harness

CONFIG = dict(
    vocab_size=1000,
    hidden_size=320,
    num_attention_heads=4,  # head dim 80, as XL
    intermediate_size=1280,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
DEPTHS = (2, 12)
TINY_DEPTHS = (1, 3)
MODES = ("off", "emulate", "graphs-replay-stub", "off+launchers")


# ---------------------------------------------------------------------------------------------------------------
# stubs
# ---------------------------------------------------------------------------------------------------------------
class _Buffers:
    """Preallocated outputs by shape: a stub's whole cost is one dict lookup."""

    def __init__(self):
        self.bufs: dict[tuple, torch.Tensor] = {}

    def get(self, shape: tuple) -> torch.Tensor:
        b = self.bufs.get(shape)
        if b is None:
            b = self.bufs[shape] = torch.zeros(shape)
        return b


def _stub_ops(bufs: _Buffers) -> dict:
    def add_layernorm(x, residual, weight, bias, eps=1e-5):
        return x, (x if residual is None else residual)

    def linear_residual(x, weight, bias, residual):
        return residual

    def linear_gelu(x, weight, bias):
        return bufs.get((x.shape[0], weight.shape[0]))

    def attention_varlen(
        q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, causal=False, seqlens_q=None, seqlens_k=None
    ):
        return bufs.get(tuple(q.shape))

    def attention(q, k, v, mask=None, *, scale=None, causal=False):
        return bufs.get(tuple(q.shape))

    return dict(
        add_layernorm=add_layernorm,
        linear_residual=linear_residual,
        linear_gelu=linear_gelu,
        attention_varlen=attention_varlen,
        attention=attention,
    )


def _stub_backend(bufs: _Buffers):
    from xlmrxl.backend import Backend

    ops = _stub_ops(bufs)

    from xlmrxl.backend import Impl

    class StubBackend(Backend):
        """Every op resolves to a stub counted as a kernel (the fast route is taken; nothing computes)."""

        def resolve(self, op, device):
            return Impl(ops[op], True)

    return StubBackend("reference")


@contextlib.contextmanager
def _stub_linear(bufs: _Buffers):
    real = F.linear

    def linear(x, weight, bias=None):
        return bufs.get((x.shape[0], weight.shape[0]))

    F.linear = linear
    try:
        yield
    finally:
        F.linear = real


class _LauncherBackend:
    """Factory for a backend whose ops are xlmrxl_kernels' real launchers (checks, allocation, grid, autotune
    lookup) with only Triton's launch stubbed (``kernel[grid]`` returns a no-op), while ``launchers()`` is active."""

    @staticmethod
    def make():
        import importlib

        from xlmrxl.backend import KERNEL_MODULES, Backend, Impl

        class LauncherBackend(Backend):
            def resolve(self, op, device):
                return Impl(getattr(importlib.import_module(f"xlmrxl_kernels.{KERNEL_MODULES[op]}"), op), True)

        return LauncherBackend("reference")


@contextlib.contextmanager
def _launchers():
    """Triton launches stubbed; CPU tensors let through the launchers' device guard (``TRITON_INTERPRET=1``, re-read
    on entry and exit); the CPU-only host validation of ``cu_seqlens`` (skipped on CUDA) skipped here too."""
    import importlib
    import os

    from triton.runtime import interpreter, jit

    from xlmrxl_kernels import _utils

    attn = importlib.import_module("xlmrxl_kernels.attention")  # (the package's `attention` is the function)

    def noop(*args, **kwargs):
        return None

    def getitem(self, grid):
        return noop

    saved = [(c, c.__dict__.get("__getitem__")) for c in (jit.KernelInterface, interpreter.InterpretedFunction)]
    env = os.environ.get("TRITON_INTERPRET")
    check = attn._check_cu_seqlens
    for c, _ in saved:
        c.__getitem__ = getitem
    os.environ["TRITON_INTERPRET"] = "1"
    _utils.refresh()  # (the launchers read TRITON_INTERPRET once)
    attn._check_cu_seqlens = noop
    try:
        yield
    finally:
        for c, f in saved:
            if f is None:
                del c.__getitem__
            else:
                c.__getitem__ = f
        if env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = env
        _utils.refresh()
        attn._check_cu_seqlens = check


# ---------------------------------------------------------------------------------------------------------------
# the modes, through the public API
# ---------------------------------------------------------------------------------------------------------------
class _NoGraph:
    """A 'captured graph' whose replay does nothing: what remains is the runner's host work per forward."""

    def replay(self) -> None:
        return None


@contextlib.contextmanager
def _fake_capture():
    """``xlmrxl.fast.graphs``' warm-up and recording replaced: the first call of a bucket runs the stack once into
    the static buffers (its outputs are what replay 'rewrites'), later calls replay nothing."""
    from xlmrxl.fast import graphs

    saved = graphs._warm_up, graphs._record
    graphs._warm_up = lambda fn, n: None
    graphs._record = lambda fn, pool: (_NoGraph(), fn())
    try:
        yield
    finally:
        graphs._warm_up, graphs._record = saved


def _set_mode(model, mode: str) -> None:
    """``off``: ``set_cuda_graphs(False)``; ``emulate``: ``set_cuda_graphs("emulate")``; ``graphs-replay-stub``:
    emulate, with the encoder's runner told to take its graph branch (CPU) and the capture faked."""
    model.set_cuda_graphs("emulate" if mode in ("emulate", "graphs-replay-stub") else False)
    if mode == "graphs-replay-stub":
        ids, mask = _inputs("1x128")
        with torch.inference_mode(), _fake_capture():
            model(ids)  # makes the runner
            for runner in model.encoder._xlmrxl_graph_runners.values():
                runner._use_static = lambda device: "graph"
                runner.pool = "no-pool"  # (no CUDA: never asked for a real pool)
                runner.reset()


# ---------------------------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------------------------
def _inputs(kind: str):
    g = torch.Generator().manual_seed(0)
    if kind == "1x128":
        return torch.randint(3, CONFIG["vocab_size"], (1, 128), generator=g), None
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 128), generator=g)
    mask = torch.ones(2, 128, dtype=torch.long)
    mask[1, 100:] = 0
    return ids.masked_fill(mask == 0, CONFIG["pad_token_id"]), mask


def _build(layers: int):
    from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLModel

    torch.manual_seed(0)
    model = XLMRobertaXLModel(XLMRobertaXLConfig(num_hidden_layers=layers, **CONFIG), add_pooling_layer=False)
    return model.eval()


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _time(variants: dict, kinds: list[str], rep: int, warmup: int) -> dict:
    """{(layers, kind, variant): [us per forward]}; variants and depths interleaved call by call.

    ``variants``: name -> {layers: model}."""
    out = {(L, k, v): [] for v, per in variants.items() for L in per for k in kinds}
    with _fake_capture():
        for k in kinds:
            ids, mask = _inputs(k)
            for i in range(warmup + rep):
                for v, per in variants.items():
                    for L, model in per.items():
                        t0 = time.thread_time_ns()
                        model(ids, attention_mask=mask)
                        dt = (time.thread_time_ns() - t0) / 1e3
                        if i >= warmup:
                            out[(L, k, v)].append(dt)
    return out


def _own_times(model, ids, mask, n: int) -> dict:
    """{function: (calls per forward, own seconds per forward, cumulative seconds per forward)} under cProfile."""
    prof = cProfile.Profile()
    model(ids, attention_mask=mask)
    prof.enable()
    for _ in range(n):
        model(ids, attention_mask=mask)
    prof.disable()
    st = pstats.Stats(prof, stream=io.StringIO())
    return {
        f"{Path(file).name}:{line}({fn})": (nc / n, tt / n, ct / n)
        for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items()
    }


def _profile(per: dict, kind: str, n: int, top: int = 20) -> dict:
    """Differential cProfile between the two depths: per function, calls and own time **per layer** (the slope),
    and the fixed per-forward part; the top ``top`` of each. cProfile's own cost per call inflates small
    functions, so ``scale`` (measured slope without the profiler / profiled slope) says by how much."""
    ids, mask = _inputs(kind)
    (lo, m_lo), (hi, m_hi) = sorted(per.items())
    a, b = _own_times(m_lo, ids, mask, n), _own_times(m_hi, ids, mask, n)
    rows = []
    for f in set(a) | set(b):
        ca, ta, cta = a.get(f, (0, 0, 0))
        cb, tb, ctb = b.get(f, (0, 0, 0))
        rows.append(
            dict(
                function=f,
                calls_per_layer=(cb - ca) / (hi - lo),
                own_us_per_layer=(tb - ta) * 1e6 / (hi - lo),
                cum_us_per_layer=(ctb - cta) * 1e6 / (hi - lo),
                own_us_fixed=(ta - (tb - ta) / (hi - lo) * lo) * 1e6,
            )
        )
    total = sum(r["own_us_per_layer"] for r in rows)
    per_layer = sorted(rows, key=lambda r: -r["own_us_per_layer"])[:top]
    fixed = sorted(rows, key=lambda r: -r["own_us_fixed"])[:top]
    return dict(profiled_us_per_layer=total, per_layer=per_layer, fixed=fixed)


def _write_md(out: Path, profiles: dict, lo: int, hi: int, rep: int, threads: int, kind: str) -> None:
    with open(out / "host_overhead.md", "a") as f:
        f.write(
            f"\nPer layer = slope between L={lo} and L={hi} of this thread's CPU time per forward; {rep} forwards per "
            f"cell, variants interleaved; {threads} thread(s). `off` / `emulate` / `graphs-replay-stub`: kernel ops "
            "and F.linear stubbed (the fast path's own Python); `off+launchers`: xlmrxl_kernels' launchers run "
            "for real with only Triton's launch stubbed (F.linear stubbed).\n"
        )
        for name, prof in profiles.items():
            f.write(
                f"\n#### cProfile, `{name}`, {kind}: top 20 functions by own time per layer (slope L={lo} -> "
                f"L={hi}); sum of all per-layer own times under the profiler: "
                f"{prof['profiled_us_per_layer']:.1f} us\n\n"
                "| function | calls/layer | own us/layer | cum us/layer |\n|---|---|---|---|\n"
            )
            for r in prof["per_layer"]:
                f.write(
                    f"| `{r['function']}` | {r['calls_per_layer']:.1f} | {r['own_us_per_layer']:.2f} | "
                    f"{r['cum_us_per_layer']:.2f} |\n"
                )
            f.write(
                "\nFixed per forward (intercept), top 10 by own time:\n\n| function | own us/forward |\n|---|---|\n"
            )
            for r in prof["fixed"][:10]:
                f.write(f"| `{r['function']}` | {r['own_us_fixed']:.1f} |\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Host overhead per layer of xlmrxl's fast path with kernel launches stubbed (CPU)."
    )
    ap.add_argument("--rep", type=int, default=400, help="timed forwards per configuration (default 400)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="shallow models and few reps (CI smoke run)")
    ap.add_argument("--quick", action="store_true", help="fewer reps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    args = ap.parse_args(argv)
    rep = 15 if args.tiny else (100 if args.quick else args.rep)
    warmup = 3 if args.tiny else args.warmup
    torch.set_num_threads(args.threads)
    depths = TINY_DEPTHS if args.tiny else DEPTHS
    kinds = ["1x128", "2x(128,100)"]

    bufs = _Buffers()
    stub = _stub_backend(bufs)
    launch = _LauncherBackend.make()
    variants: dict = {m: {} for m in MODES}
    for L in depths:
        for m in MODES:
            model = _build(L)
            model.set_backend(launch if m == "off+launchers" else stub)
            with _stub_linear(bufs):
                _set_mode(model, "off" if m == "off+launchers" else m)
            variants[m][L] = model
    lo, hi = depths
    with torch.inference_mode(), _stub_linear(bufs):
        times = _time({m: variants[m] for m in MODES if m != "off+launchers"}, kinds, rep, warmup)
        with _launchers():
            times.update(_time({"off+launchers": variants["off+launchers"]}, kinds, rep, warmup))
        n_prof = 20 if args.tiny else 200
        profiles = {"off": _profile(variants["off"], kinds[1], n_prof)}
        with _launchers():
            profiles["off+launchers"] = _profile(variants["off+launchers"], kinds[1], n_prof)

    rows = []
    for k in kinds:
        for m in MODES:
            a, b = times[(lo, k, m)], times[(hi, k, m)]
            med_lo, med_hi = statistics.median(a), statistics.median(b)
            per_layer = (med_hi - med_lo) / (hi - lo)
            rows.append(
                dict(
                    input=k,
                    mode=m,
                    us_per_layer_median=per_layer,
                    us_per_layer_p90=(_quantile(b, 0.9) - _quantile(a, 0.9)) / (hi - lo),
                    us_fixed_per_forward=med_lo - lo * per_layer,
                    **{f"us_forward_L{lo}": med_lo, f"us_forward_L{hi}": med_hi},
                    target_us_per_layer=50,
                )
            )
    extra = dict(
        config=CONFIG,
        depths=list(depths),
        rep=rep,
        threads=args.threads,
        timer="time.thread_time_ns (CPU time of the timing thread)",
        note=(
            "off/emulate/graphs-replay-stub: kernel ops and F.linear stubbed (preallocated outputs); off+launchers: "
            "xlmrxl_kernels launchers real, Triton launch stubbed, F.linear stubbed; per layer = slope between the "
            "two depths; emulate = CUDA-graph static-buffer path without capture; graphs-replay-stub = what remains "
            "on the host per forward when a captured graph replays (plus cudaGraphLaunch on a GPU)"
        ),
        profiles=profiles,
    )
    out = harness.write_results("host_overhead", rows, extra=extra, out_dir=args.out)
    _write_md(out, profiles, lo, hi, rep, args.threads, kinds[1])
    for r in rows:
        print(
            f"{r['input']:>12} {r['mode']:>20}: {r['us_per_layer_median']:7.1f} us/layer (p90 "
            f"{r['us_per_layer_p90']:.1f}), fixed {r['us_fixed_per_forward']:.0f} us/forward"
        )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
