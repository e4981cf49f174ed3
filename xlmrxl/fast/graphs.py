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

``DecodeGraphRunner(step, cache, ...)``
    One cached decode step (S = 1 new token per row) against an ``xlmrxl.StaticCache``.
    ``step(hidden (B, 1, H), keep (B, Kb), cache_view) -> (B, 1, H)`` is the fused decoder stack (e.g.
    ``decoder_forward(encoder, hidden, keep, cache_view, backend)[0]``). Nothing on the host is baked in: the write
    slot is the device tensor ``positions`` (B,) int64 read by ``cache_update`` in the graph, the keys seen are the
    fixed view ``cache.keys[l][:, :, :Kb]`` of a KV-length bucket Kb >= n + 1 (same ladder, capped at
    ``max_length``), and the mask (B, Kb) is a static device buffer: the caller's mask over ``[0, n + 1)``, zeros
    over the unwritten slots. ``cache_view.get_seq_length()`` is Kb - 1, so the step's query is aligned to the end
    of the view (with one query per row, causality is the mask). After the step the cache's host lengths advance
    by one (``StaticCache.advance``).
    Token positions for the embeddings stay outside (the caller computes them; to capture the embeddings
    too, pass position ids as a static device buffer the same way).

Wiring (``xlmrxl.fast.stack`` owns it; nothing here imports the model): ``set_graph_mode(encoder, mode)``
(``model.set_cuda_graphs``, ``from_pretrained(..., cuda_graphs=...)``; else ``XLMRXL_CUDA_GRAPHS`` read at the
encoder's first fused call) stores the mode on the encoder. ``encoder_forward`` (the packed route of our encoder,
``forward_packed`` and the transformers patch alike), without ``output_hidden_states``, hands the packed tokens to
one ``PackedGraphRunner`` per (backend ops, dtype, causal) whose ``run`` is the layer stack on the static buffers,
keyed by the per-layer plans' generation (a new one whenever a module / Parameter is assigned or a q/k/v storage
moves); the shared pool is ``model_graph_pool(encoder)``. ``decoder_forward`` with an xlmrxl ``StaticCache`` and one
new token per row goes through one ``DecodeGraphRunner`` per (encoder, cache). Eager instead, with the reason
(``xlmrxl.fast.stack.graph_reasons``, code ``cuda_graphs``): mode off, tensors not on CUDA, attention on the
PyTorch reference (it reads lengths on the host), a call beyond the buckets.

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

from .. import env
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
    "DecodeGraphRunner",
    "model_graph_pool",
    "module_tensors",
    "in_capture",
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

    def will_use_static(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int | torch.Tensor) -> bool:
        """Would this call take the bucketed path (graph or emulated)?"""
        if self._use_static(x.device) is None:
            return False
        ms = max_seqlen if isinstance(max_seqlen, int) else None
        return self.bucket(x.shape[0], cu_seqlens.shape[0] - 1, ms) is not None

    def __call__(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen, *, key: Hashable = None):
        how = self._use_static(x.device)
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
            if slot.graph is None:
                self._capture(slot, lambda: self.run(slot.x, slot.cu, sb))
                self._weights.snapshot()
            slot.graph.replay()
        else:
            fresh = slot.out is None
            slot.out = self.run(slot.x, slot.cu, sb)
            if fresh:
                self._weights.snapshot()
        return _slice_out(slot.out, T)


# ---------------------------------------------------------------------------------------------------------------
# the cached decode step
# ---------------------------------------------------------------------------------------------------------------
class _CacheView:
    """What the decoder stack sees as its cache during a captured step: writes at the device ``positions``, returns
    the fixed (B, heads, Kb, D) prefix views of the StaticCache's buffers (shapes constant per bucket)."""

    copies_states = True  # cache_update copies: strided views of the QKV output may be handed over

    def __init__(self, cache, kb: int, positions: torch.Tensor):
        self.cache, self.kb, self.positions = cache, kb, positions

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.kb - 1  # one new query aligned to the end of the Kb-slot view; the mask hides the unwritten

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs=None):
        from xlmrxl_kernels import cache_update

        keys, values = self.cache.keys[layer_idx], self.cache.values[layer_idx]
        cache_update(keys, values, key_states, value_states, self.positions)
        return keys[:, :, : self.kb], values[:, :, : self.kb]


class _DecodeSlot:
    __slots__ = ("bucket", "hidden", "keep", "view", "graph", "out")

    def __init__(self, bucket, batch: int, hidden: int, dtype, mask_dtype, device, cache, positions):
        kb = bucket[0]
        self.bucket = bucket
        self.hidden = torch.zeros((batch, 1, hidden), dtype=dtype, device=device)
        self.keep = torch.zeros((batch, kb), dtype=mask_dtype, device=device)
        self.view = _CacheView(cache, kb, positions)
        self.graph = None
        self.out = None


def _advance(cache, end: int) -> None:
    """The StaticCache's host lengths after a step that wrote through ``_CacheView`` (no ``update`` call ran)."""
    cache.advance(end - int(cache.get_seq_length()))


class DecodeGraphRunner(_GraphBase):
    """One-token decode steps against a ``StaticCache`` through KV-length buckets (see the module docstring).

    ``step(hidden (B, S, H), mask (B, past + S) or None, cache) -> (B, S, H)`` (or a tuple of such): called with the
    static buffers and a ``_CacheView`` on the bucketed path, and as given (the real cache) on the eager one
    (prefill, S > 1, an unallocated cache, mode off). ``cache`` the StaticCache; ``hidden_size`` / ``dtype`` of the
    step's hidden states."""

    def __init__(
        self,
        step: Callable[..., Any],
        cache: Any,
        *,
        hidden_size: int,
        dtype: torch.dtype,
        mode: bool | str | None = None,
        tensors: Callable[[], Iterable[torch.Tensor]] | None = None,
        min_tokens: int = 16,
        pool: Any = None,
        warmup: int = 2,
        max_graphs: int = 64,
    ) -> None:
        self.step, self.cache = step, cache
        self.hidden_size, self.dtype = int(hidden_size), dtype
        self.ladder = token_buckets(cache.max_length, min(min_tokens, cache.max_length))
        self._positions: torch.Tensor | None = None

        def collect() -> list[torch.Tensor]:  # the cache's buffers are read by the graphs too
            own = list(tensors()) if tensors is not None else []
            return own + [t for t in (*cache.keys, *cache.values) if t is not None]

        super().__init__(mode=mode, pool=pool, tensors=collect, warmup=warmup, max_graphs=max_graphs)

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, *, key: Hashable = None):
        cache = self.cache
        B, S, H = hidden.shape
        n = int(cache.get_seq_length())
        end = n + S
        if attention_mask is not None and tuple(attention_mask.shape) != (B, end):
            raise ValueError(
                f"attention_mask must be (batch, past + 1) = ({B}, {end}) with {n} cached positions, got "
                f"{tuple(attention_mask.shape)}"
            )
        how = self._use_static(hidden.device)
        if (
            how is None
            or S != 1
            or H != self.hidden_size
            or hidden.dtype != self.dtype
            or B != cache.batch_size
            or any(k is None for k in cache.keys)
        ):
            return self.step(hidden, attention_mask, cache)  # eager: prefill, several tokens, unallocated cache
        if end > cache.max_length:
            raise ValueError(
                f"StaticCache is full: it holds {n} tokens and got 1 more, but max_length={cache.max_length}; "
                f"allocate StaticCache(..., max_length>={end}) or crop() it"
            )
        self._check_weights(key)
        kb = ceil_bucket(end, self.ladder)
        mask_dtype = attention_mask.dtype if attention_mask is not None else torch.long
        bucket = (kb, mask_dtype)
        if self._positions is None or self._positions.device != hidden.device:
            self._positions = torch.zeros(B, dtype=torch.int64, device=hidden.device)
        slot = self._slot(
            bucket,
            lambda: _DecodeSlot(bucket, B, H, self.dtype, mask_dtype, hidden.device, cache, self._positions),
        )
        self._positions.fill_(n)
        slot.hidden.copy_(hidden)
        if attention_mask is None:
            slot.keep[:, :end].fill_(1)
        else:
            slot.keep[:, :end].copy_(attention_mask)
        if end < kb:
            slot.keep[:, end:].zero_()
        if how == "graph":
            if slot.graph is None:
                # the warm-up runs write this step's K/V too (same slot, same values): harmless, then replayed
                self._capture(slot, lambda: self.step(slot.hidden, slot.keep, slot.view))
                self._weights.snapshot()
            slot.graph.replay()
        else:
            fresh = slot.out is None
            slot.out = self.step(slot.hidden, slot.keep, slot.view)
            if fresh:
                self._weights.snapshot()
        _advance(cache, end)
        return _clone_out(slot.out)
