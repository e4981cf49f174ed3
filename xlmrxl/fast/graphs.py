"""CUDA graphs for the packed layer stack and the cached decode step: buckets, static buffers, capture, replay.

Two runners, each wrapping a callable that the layer stack provides (the seams; nothing here knows the model):

``PackedGraphRunner(run, hidden_size=..., dtype=..., tensors=...)``
    ``run(x, cu_seqlens, max_seqlen) -> out`` is the packed layer stack after packing: ``x`` (T, H) real tokens,
    ``cu_seqlens`` int32 (B+1,) on x's device, ``max_seqlen`` a host int >= every segment, ``out`` (T, ...) (a
    tensor, or a tuple of tensors each with T leading rows). ``runner(x, cu_seqlens, max_seqlen, key=...)``
    returns the same values, computed either eagerly or through a per-bucket static-buffer path:

    * **Buckets.** Token counts go up the ladder 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5x between them)
      to ``max_tokens`` (default 4096: 17 buckets). A token count just past a bucket wastes at most 1/3 of the next
      bucket (2^k + 1 -> 1.5 * 2^k), 1/4 past a 1.5x step; for uniformly spread T the mean waste is ~15 %, against
      ~25 % mean / 50 % worst for powers of two alone, at twice the captures (17 against 9). ``max_seqlen`` is
      bucketed on the same ladder (capped at the token bucket), so the attention grid, which is sized
      ``cdiv(max_seqlen, BLOCK_M) * segments * heads``, stays proportional to the real work. Segments (the number of
      ``cu_seqlens`` intervals, pad segments included) go up powers of two from 2.
      A bucket is the triple ``(tokens Tb, segments Bb, seqlen Sb)``; each gets one graph and its static buffers
      (the (Tb, H) input buffer is shared by the buckets of one token count).
    * **Inert padding (the rule).** The Tb - T pad rows are zeros and form *extra sequences after the real ones*:
      the static ``cu_seqlens`` is ``[cu_0 .. cu_B, min(T + Sb, Tb), min(T + 2 Sb, Tb), ..., Tb]`` (length Bb + 1):
      the pad rows are cut into segments of at most Sb rows (so ``max_seqlen = Sb`` stays true for them), and the
      remaining segments are empty. Every real token's segment is exactly its own sequence, so no real query ever
      sees a pad key, and every other op (GEMMs, LayerNorm, GELU, residual adds) is row-wise: the pad rows cannot
      change a real row. Outputs are sliced back to T rows (and copied out of the static buffer).
    * ``max_seqlen`` given to ``run`` is the bucket's bound Sb (a host int fixed per graph, never the call's value);
      a ``max_seqlen`` that is a tensor (unknown on the host) uses Sb = Tb.
    * **Capture** on the first use of a bucket: warm-up runs of ``run`` on a side stream (Triton compiles and any
      autotuning happen there, never inside the capture), then ``torch.cuda.graph(g, pool=pool)`` with one memory
      pool shared by every capture of the model (``model_graph_pool(module)``). Replay otherwise. Graphs sharing a
      pool may reuse each other's freed intermediates, so an output is valid only until the next replay of any
      graph of the pool: it is copied out right after its replay (and graphs never run concurrently).
    * **Invalidation**: ``key`` (any hashable the caller computes cheaply per call, e.g. its module-structure
      fingerprint) changing re-collects the weight list (``tensors()``) and drops every graph; so does any weight's
      ``data_ptr`` changing (``model.to``, ``half()``, a swapped module) and ``set_mode(False)`` / ``reset()``.
      The pointers are recorded again after a bucket's first run (warm-up and capture), which may itself re-point
      weights (the fused q/k/v buffer is made on the first fast forward).
      In-place weight updates (same storage) need nothing: a graph reads memory, not values.
    * Inside someone else's capture (``torch.cuda.is_current_stream_capturing()``), ``run`` runs directly: never a
      capture inside a capture. ``in_capture()`` tells other code (the measured-choice dispatcher: no timing then).

``DecodeGraphRunner`` (``xlmrxl.fast.decode_graph``): the one-token decode step against a ``StaticCache``.

Wiring (``xlmrxl.fast.stack`` owns it; nothing here imports the model): ``set_graph_mode(encoder, mode)``
(``model.set_cuda_graphs``, ``from_pretrained(..., cuda_graphs=...)``; else ``XLMRXL_CUDA_GRAPHS`` read at the
encoder's first fused call) stores the mode on the encoder. ``encoder_forward`` (the packed route of our encoder,
``forward_packed``, the transformers patch and COMET's encoder alike) hands the packed tokens to one
``PackedGraphRunner`` per (backend ops, dtype, causal, hidden states, layer mix) whose ``run`` is the layer stack on
the static buffers, keyed by the per-layer plans' generation (a new one whenever a module / Parameter is assigned or
a q/k/v storage moves); the shared pool is ``model_graph_pool(encoder)``. ``decoder_forward`` with an xlmrxl
``StaticCache`` and one new token per row goes through one ``DecodeGraphRunner`` per (encoder, cache). Eager
instead, with the reason (``xlmrxl.fast.stack.graph_reasons``, code ``cuda_graphs``): mode off, tensors not on CUDA,
attention on the PyTorch reference (it reads lengths on the host), a call beyond the buckets.

Modes (``resolve_mode``): ``"auto"`` (graphs when the tensors are on CUDA and the call fits the buckets, eager
otherwise), ``True`` (graphs; an error on CPU tensors, eager with one logged line when a call exceeds the buckets),
``False`` (eager, always), ``"emulate"`` (the bucketed static-buffer path exactly, with ``run`` called on the static
buffers instead of captured: how CPU tests prove bucketing, padding and slicing). ``None`` or ``"auto"`` defer to
``XLMRXL_CUDA_GRAPHS`` (auto / on / off / emulate, and 1/0/true/false/yes/no), parsed by ``xlmrxl_kernels.env``
(cached; ``env.refresh()`` re-reads), never per forward; an unknown value is an ``EnvError`` (a ValueError) naming
the variable and the allowed values.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch

from .. import env, record
from ..backend import log_once
from .buckets import (
    PackedBucket,
    ceil_bucket,
    pad_cu_seqlens,
    plan_packed_bucket,
    segment_bucket,
    token_buckets,
)

logger = logging.getLogger("xlmrxl")

__all__ = [
    "ENV_VAR",
    "MODE_VALUES",
    "resolve_mode",
    "token_buckets",
    "ceil_bucket",
    "segment_bucket",
    "PackedBucket",
    "plan_packed_bucket",
    "pad_cu_seqlens",
    "PackedGraphRunner",
    "model_graph_pool",
    "module_tensors",
    "in_capture",
    "set_graph_mode",
    "graph_mode",
    "graph_reasons",
]

ENV_VAR = "XLMRXL_CUDA_GRAPHS"
# accepted spellings -> mode (for the environment variable and the cuda_graphs= argument alike)
_SPELLINGS: dict[str, bool | str] = {
    "auto": "auto",
    "emulate": "emulate",
    "1": True,
    "true": True,
    "on": True,
    "yes": True,
    "0": False,
    "false": False,
    "off": False,
    "no": False,
}
MODE_VALUES = ("auto", "on", "off", "emulate")
_DATA_PTR = torch.Tensor.data_ptr
_CAPTURING = 0  # > 0 while one of our captures (or warm-ups before it) runs


def resolve_mode(mode: bool | str | None = None) -> bool | str:
    """The effective mode: True, False, ``"auto"`` or ``"emulate"``.

    An explicit True / False / ``"emulate"`` (or ``"on"`` / ``"off"``) wins; None or ``"auto"`` read
    ``XLMRXL_CUDA_GRAPHS`` (unset or empty: ``"auto"``)."""
    if isinstance(mode, bool):
        return mode
    if mode is not None:
        got = _SPELLINGS.get(str(mode).strip().lower())
        if got is None:
            raise ValueError(
                f"unknown cuda_graphs={mode!r}; choose one of 'auto', True, False, 'emulate' (or 'on' / 'off')"
            )
        if got != "auto":
            return got
    return _SPELLINGS[str(env.get(ENV_VAR))]  # xlmrxl_kernels.env: strict (EnvError names the variable), cached


def in_capture() -> bool:
    """True while a CUDA graph is being captured (ours, or on the current stream): no timing, tuning or host sync."""
    if _CAPTURING:
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def _capturing():
    global _CAPTURING
    _CAPTURING += 1
    try:
        yield
    finally:
        _CAPTURING -= 1


def module_tensors(module: torch.nn.Module) -> Callable[[], list[torch.Tensor]]:
    """``tensors=`` for a runner: every parameter and buffer of ``module`` (what a captured graph may read)."""

    def collect() -> list[torch.Tensor]:
        return [*module.parameters(), *module.buffers()]

    return collect


def model_graph_pool(module: torch.nn.Module) -> Any:
    """One CUDA-graph memory pool per model (stored on the module), shared by all its runners' captures."""
    pool = module.__dict__.get("_xlmrxl_graph_pool")
    if pool is None:
        pool = torch.cuda.graph_pool_handle()
        module.__dict__["_xlmrxl_graph_pool"] = pool
    return pool


def _slice_out(out: Any, n: int):
    """The first ``n`` rows of ``out`` (a tensor or a tuple/list of tensors), copied out of the static buffers."""
    if isinstance(out, torch.Tensor):
        return out[:n].clone()
    return type(out)(_slice_out(o, n) for o in out)


def _clone_out(out: Any):
    if isinstance(out, torch.Tensor):
        return out.clone()
    return type(out)(_clone_out(o) for o in out)


class _Weights:
    """Graph validity: the caller's cheap ``key`` plus the data pointers of the tensors a graph reads."""

    def __init__(self, tensors: Callable[[], Iterable[torch.Tensor]] | None):
        self.collect = tensors
        self.key: Hashable = None
        self.tensors: list[torch.Tensor] = []
        self.ptrs: tuple = ()
        self.meta: tuple = ()
        self.primed = False

    def changed(self, key: Hashable) -> bool:
        """True (after refreshing) when the graphs captured so far may read stale addresses."""
        if self.collect is None:
            if self.primed and key == self.key:
                return False
            self.key, self.primed = key, True
            return True
        if not self.primed or key != self.key:
            self.key, self.primed = key, True
            self.tensors = list(self.collect())
            self.meta = tuple((t.dtype, t.device, tuple(t.shape)) for t in self.tensors)
            self.ptrs = tuple(map(_DATA_PTR, self.tensors))
            return True
        ptrs = tuple(map(_DATA_PTR, self.tensors))  # ~60 ns per tensor: this runs per call
        if ptrs == self.ptrs:
            return False
        self.ptrs = ptrs
        self.meta = tuple((t.dtype, t.device, tuple(t.shape)) for t in self.tensors)
        return True

    def snapshot(self) -> None:
        """Record the current pointers (after a first run, which may re-point weights, e.g. the q/k/v fusion)."""
        self.ptrs = tuple(map(_DATA_PTR, self.tensors))

    def forget(self) -> None:
        self.key, self.tensors, self.ptrs, self.meta, self.primed = None, [], (), (), False


class _GraphBase:
    """Mode, pool, capture and invalidation shared by both runners."""

    def __init__(self, *, mode, pool, tensors, warmup: int, max_graphs: int):
        self.pool = pool
        self.warmup = int(warmup)
        self.max_graphs = int(max_graphs)
        self._weights = _Weights(tensors)
        self._slots: OrderedDict = OrderedDict()
        self.captures = 0  # graphs captured so far (tests, logs)
        self.last_event: str | None = None  # the last call: "captured", "replayed", "emulated" or None (eager)
        self.mode: bool | str = "auto"
        self.set_mode(mode)

    def set_mode(self, mode: bool | str | None = None) -> None:
        """Change the mode (see the module docstring); False drops every graph and static buffer."""
        self.mode = resolve_mode(mode)
        if self.mode is False:
            self.reset()

    def reset(self) -> None:
        """Drop every graph and static buffer (they are captured again on next use)."""
        self._slots.clear()
        self._weights.forget()

    @property
    def num_graphs(self) -> int:
        return sum(1 for s in self._slots.values() if s.graph is not None)

    def _use_static(self, device: torch.device) -> str | None:
        """'graph', 'emulate', or None (eager) for a call on ``device`` (before bucket fit)."""
        mode = self.mode
        if mode is False:
            return None
        if mode == "emulate":
            return "emulate"
        if device.type != "cuda":
            if mode is True:
                raise ValueError(
                    f"cuda_graphs=True but the tensors are on {device.type}; CUDA graphs need a CUDA device. Use "
                    f"cuda_graphs='auto' (graphs only on CUDA) or {ENV_VAR}=emulate to test the bucketed path here"
                )
            return None
        if in_capture():
            return None  # someone else is capturing us: run straight into their graph, never nest a capture
        return "graph"

    def _replayed(self, captured: bool) -> None:
        record.count_graph("replays")
        self.last_event = "captured" if captured else "replayed"

    def _emulated(self) -> None:
        record.count_graph("emulated")
        self.last_event = "emulated"

    def _check_weights(self, key: Hashable) -> None:
        if self._weights.changed(key) and self._slots:
            logger.debug("xlmrxl: CUDA graphs dropped (weights or modules changed)")
            self._slots.clear()

    def _slot(self, bucket, make: Callable[[], Any]):
        slot = self._slots.get(bucket)
        if slot is None:
            while len(self._slots) >= self.max_graphs:
                self._slots.popitem(last=False)  # least recently used
            slot = make()
            self._slots[bucket] = slot
        else:
            self._slots.move_to_end(bucket)
        return slot

    def _capture(self, slot, fn: Callable[[], Any]) -> None:
        """Warm up on a side stream (compiles, autotuning), then capture ``fn`` into the shared pool."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with _capturing():
            _warm_up(fn, max(self.warmup, 1))
            slot.graph, slot.out = _record(fn, self.pool)
        self.captures += 1
        record.count_graph("captures")
        logger.debug("xlmrxl: captured a CUDA graph for bucket %s", slot.bucket)


def _warm_up(fn: Callable[[], Any], n: int) -> None:
    """``n`` eager runs on a side stream, as PyTorch requires before a capture (lazy init, Triton compiles)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(n):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def _record(fn: Callable[[], Any], pool) -> tuple[Any, Any]:
    """(graph, outputs): ``fn`` captured into ``pool``; replaying the graph rewrites the same output tensors."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


# ---------------------------------------------------------------------------------------------------------------
# the packed layer stack
# ---------------------------------------------------------------------------------------------------------------
class _PackedSlot:
    __slots__ = ("bucket", "x", "cu", "tail", "graph", "out")

    def __init__(self, bucket: PackedBucket, x: torch.Tensor, device):
        tb, bb, sb = bucket
        self.bucket = bucket
        self.x = x  # (Tb, H), shared by the slots of one token bucket (graphs never run concurrently)
        self.cu = torch.zeros(bb + 1, dtype=torch.int32, device=device)
        self.tail = torch.arange(1, bb + 1, dtype=torch.int32, device=device) * sb  # j * Sb for pad segment j
        self.graph = None
        self.out = None


class PackedGraphRunner(_GraphBase):
    """The packed layer stack through per-bucket static buffers, captured as CUDA graphs (see the module docstring).

    ``run(x, cu_seqlens, max_seqlen)``: the packed forward. ``hidden_size`` / ``dtype``: of ``x`` (the static input
    buffers). ``tensors``: what the graphs read (``module_tensors(encoder)``); ``max_tokens``: the largest bucket;
    ``max_segments``: the largest segment bucket; ``pool``: a shared ``torch.cuda.graph_pool_handle()`` (default:
    one of its own, made at the first capture); ``max_graphs``: least recently used buckets beyond this are
    dropped."""

    def __init__(
        self,
        run: Callable[..., Any],
        *,
        hidden_size: int,
        dtype: torch.dtype,
        mode: bool | str | None = None,
        tensors: Callable[[], Iterable[torch.Tensor]] | None = None,
        max_tokens: int = 4096,
        min_tokens: int = 16,
        max_segments: int = 512,
        pool: Any = None,
        warmup: int = 2,
        max_graphs: int = 64,
    ) -> None:
        self.run = run
        self.hidden_size, self.dtype = int(hidden_size), dtype
        self.ladder = token_buckets(max_tokens, min_tokens)
        self.max_segments = int(max_segments)
        self._inputs: dict[int, torch.Tensor] = {}
        super().__init__(mode=mode, pool=pool, tensors=tensors, warmup=warmup, max_graphs=max_graphs)

    def _input_buffer(self, tokens: int, device) -> torch.Tensor:
        buf = self._inputs.get(tokens)
        if buf is None or buf.device != device:
            buf = self._inputs[tokens] = torch.zeros((tokens, self.hidden_size), dtype=self.dtype, device=device)
        return buf

    def reset(self) -> None:
        super().reset()
        self._inputs.clear()

    def bucket(self, num_tokens: int, batch: int, max_seqlen: int | None) -> PackedBucket | None:
        """The bucket a call would use (None: it runs eagerly)."""
        return plan_packed_bucket(num_tokens, batch, max_seqlen, self.ladder, self.max_segments)

    def __call__(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen, *, key: Hashable = None):
        how = self._use_static(x.device)
        self.last_event = None
        if how is None:
            return self.run(x, cu_seqlens, max_seqlen)
        T, B = x.shape[0], cu_seqlens.shape[0] - 1
        bucket = self.bucket(T, B, max_seqlen if isinstance(max_seqlen, int) else None)
        if (
            bucket is None
            or x.dim() != 2
            or x.shape[1] != self.hidden_size
            or x.dtype != self.dtype
            or cu_seqlens.dtype != torch.int32
            or T == 0
        ):
            if self.mode is True and bucket is None:
                log_once(
                    f"xlmrxl: a call with {T} tokens in {B} sequences exceeds the CUDA-graph buckets "
                    f"(max_tokens={self.ladder[-1]}, max_segments={self.max_segments}); it runs eagerly"
                )
            return self.run(x, cu_seqlens, max_seqlen)
        self._check_weights(key)
        slot = self._slot(bucket, lambda: _PackedSlot(bucket, self._input_buffer(bucket.tokens, x.device), x.device))
        tb, bb, sb = bucket
        # static inputs (outside the graph): real rows, zero pad rows, real offsets, pad segments, empty segments
        slot.x[:T].copy_(x)
        if T < tb:
            slot.x[T:].zero_()
        slot.cu[: B + 1].copy_(cu_seqlens)
        tail = slot.cu[B + 1 :]
        torch.add(slot.tail[: bb - B], T, out=tail)
        tail.clamp_(max=tb)
        if how == "graph":
            captured = slot.graph is None
            if captured:
                self._capture(slot, lambda: self.run(slot.x, slot.cu, sb))
                self._weights.snapshot()
            slot.graph.replay()
            self._replayed(captured)
        else:
            fresh = slot.out is None
            slot.out = self.run(slot.x, slot.cu, sb)
            if fresh:
                self._weights.snapshot()
            self._emulated()
        return _slice_out(slot.out, T)


# ---------------------------------------------------------------------------------------------------------------
# the mode of an encoder (its runners live on it)
# ---------------------------------------------------------------------------------------------------------------
def set_graph_mode(
    encoder: torch.nn.Module, mode: bool | str | None = "auto", *, max_tokens: int | None = None
) -> None:
    """Use CUDA graphs for ``encoder``'s fused calls: ``"auto"`` (on CUDA, when the call fits the buckets), True,
    False, ``"emulate"`` (the bucketed static-buffer path without capture, for CPU tests); None / ``"auto"`` read
    ``XLMRXL_CUDA_GRAPHS`` now (once). Drops every captured graph; ``max_tokens``: the largest token bucket
    (default 4096)."""
    resolved = resolve_mode(mode)
    d = encoder.__dict__
    if max_tokens is not None:
        token_buckets(int(max_tokens))  # (validates)
        d["_xlmrxl_graph_max_tokens"] = int(max_tokens)
    for runner in d.get("_xlmrxl_graph_runners", {}).values():
        runner.reset()
    d["_xlmrxl_graph_runners"] = _Runners()
    d["_xlmrxl_graph_mode"] = resolved
    d["_xlmrxl_graph_reasons"] = ()


def graph_mode(encoder: torch.nn.Module) -> bool | str:
    """The effective CUDA-graph mode of ``encoder`` (``XLMRXL_CUDA_GRAPHS`` is read at the first call if never set)."""
    mode = encoder.__dict__.get("_xlmrxl_graph_mode")
    if mode is None:
        set_graph_mode(encoder, None)
        mode = encoder.__dict__["_xlmrxl_graph_mode"]
    return mode


def graph_reasons(encoder: torch.nn.Module) -> tuple:
    """Why the last packed call of ``encoder`` ran eagerly instead of through CUDA graphs (empty: it did not)."""
    return encoder.__dict__.get("_xlmrxl_graph_reasons", ())


class _Runners(dict):
    """Graph runners (closures, device buffers, graphs): a copy of the model or cache (deepcopy, pickle) starts
    without any and captures its own."""

    def __reduce_ex__(self, protocol: int):
        return (_Runners, ())
