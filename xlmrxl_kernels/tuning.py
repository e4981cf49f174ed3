"""The one place that chooses an implementation per op, device, dtype and shape bucket, from the op table
(``xlmrxl_kernels.table``: Triton first, PyTorch's own, the reference last).

The model layer asks once per (op, device, shape bucket) and stores the bound callable it gets::

    choice = tuning.choose("linear_gelu", (x, weight, bias), backend="auto")  # a Choice
    fn = choice.bind((x, weight, bias), {})                                  # what a layer calls from then on
    choice.name, choice.source, choice.reasons                               # what runs, why not the others

The policy, first match wins (``backend``: "auto", "triton" or "reference", from the caller):

- ``XLMRXL_DISABLE_KERNELS`` names the op: its Triton entry does not take part (reason ``DISABLED``).
- ``backend="reference"``: the rule (below) picks, without Triton or a measured PyTorch entry (``BACKEND``).
- ``backend="triton"``: the Triton entry when its hard limits take the call, else the rule (logged as a warning).
- ``backend="auto"`` on a measured device (CUDA): in memory; then the disk cache, a JSON file keyed by device name
  and torch / triton / xlmrxl_kernels versions (``XLMRXL_TUNING_CACHE``, default
  ``~/.cache/xlmrxl/tuning.json``) unless ``XLMRXL_TUNING=off``; then, outside CUDA-graph capture and with tuning
  on, measure every entry that can take the call (one warm-up call, which also compiles / autotunes Triton, then a
  few timed calls with CUDA events, about 2 ms per entry; the fastest wins, is written to the disk cache and logged
  once at INFO on the ``xlmrxl_kernels`` logger); otherwise the shipped ``tuned_defaults`` for this device, else
  the first entry that can take the call (Triton when it can).
- ``backend="auto"`` elsewhere (CPU): the rule.
- The rule: the first entry marked ``rule`` that can take the call (the PyTorch maths of the reference, then the
  reference itself).

Keys bucket the token counts to powers of two (``shape_key``) and end with every tensor argument's dtype; the
entries' hard limits are functions of the key and the device, so one check per key serves every call of it.
Every entry not chosen carries its ``Reason`` (one vocabulary, ``xlmrxl_kernels.reasons``). Nothing here imports
Triton or ``xlmrxl``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import env
from . import reasons as R
from . import table as _table
from .logs import log_once, logger
from .reasons import Reason, describe
from .tuned_defaults import TUNED_DEFAULTS

__all__ = ["Choice", "Tuner", "choose", "run", "shape_key", "candidates", "default_tuner", "cuda_timer", "VERSION"]

VERSION = "2"  # this package's version in the tuning cache key: bump when an entry's maths or name changes


# the message of each "why not" code, before ": <detail>"
TEXT = {
    R.SLOWER: "measured slower",
    R.KERNEL: "cannot take this call",
    R.DEVICE: "cannot take this call",
    R.TRITON: "cannot take this call",
    R.DISABLED: "disabled by XLMRXL_DISABLE_KERNELS",
    R.BACKEND: "backend='reference'",
    R.TUNING_OFF: "XLMRXL_TUNING=off: fixed default",
    R.CAPTURE: "inside CUDA-graph capture: cached choice or fixed default, never timed",
    R.NOT_MEASURED: "not measured on this device: the rule chose",
    R.DEFAULT_ORDER: "an entry earlier in the table's order can take the call",
    R.MEASURE_FAILED: "raised while being measured",
    R.NO_CANDIDATE: "no entry can take this call: the reference runs",
}


def why(code: str, detail: str | None = None) -> Reason:
    """A ``Reason`` with ``code``, its message ``TEXT[code]`` and an optional detail."""
    return Reason(code, TEXT[code] + (f": {detail}" if detail else ""))


_SOURCES = ("disk", "measured", "tuned_defaults", "default", "capture", "backend", "rule", "fallback")


@dataclass(frozen=True)
class Choice:
    """The implementation chosen for one (device, op, shape key); call it with the op's arguments."""

    op: str
    key: tuple
    candidate: _table.Entry
    source: str  # one of _SOURCES
    reasons: dict = field(default_factory=dict)  # entry name -> why it was not chosen (a Reason)
    timings_ms: dict = field(default_factory=dict)

    def __call__(self, *args, **kwargs):
        return self.candidate.fn(*args, **kwargs)

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def fn(self):
        """The chosen entry's function."""
        return self.candidate.fn

    def bind(self, args: tuple, kwargs: dict):
        """The callable to store for calls like this one (a lean launcher for Triton; see ``Entry.bind``)."""
        return self.candidate.bind(args, kwargs)

    @property
    def why_not_triton(self) -> Reason | None:
        """None when Triton runs; else the reason it does not."""
        return None if self.name == "triton" else self.reasons.get("triton", why(R.DEFAULT_ORDER))

    def why_not(self) -> list[Reason]:
        """Why each entry other than the chosen one does not run."""
        return [Reason(r.code, f"{name}: {r}") for name, r in self.reasons.items()]


# -- shape keys -------------------------------------------------------------------------------------------------------
def _b(n: int) -> int:
    """Bucket a token count: the next power of two (1, 2, 4, ..., 65536, then multiples of 65536)."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length() if n <= 65536 else -(-n // 65536) * 65536


def _dtypes(args: Sequence, kwargs: dict) -> tuple:
    """Every tensor argument's dtype (eligibility depends on them: a cached choice is valid for the whole key)."""
    out = [a.dtype for a in args if isinstance(a, torch.Tensor)]
    if kwargs:
        out += [a.dtype for a in kwargs.values() if isinstance(a, torch.Tensor)]
    return tuple(out)


def _rows(x) -> int:
    return x.numel() // max(x.shape[-1], 1) if x.dim() else 0


def shape_key(op: str, args: Sequence, kwargs: dict | None = None) -> tuple:
    """The bucket a call belongs to: bucketed token counts, the sizes and flags that select a different code path,
    and (last) every tensor argument's dtype. Every candidate's eligibility is a function of the key and the device,
    so calls with one key share one choice, checked once."""
    kw = kwargs or {}
    a = args
    if op in ("linear_gelu", "linear_residual"):
        x, w = a[0], a[1]
        key = (_b(_rows(x)), w.shape[0], w.shape[-1])
    elif op == "add_layernorm":
        x = a[0]
        key = (_b(_rows(x)), x.shape[-1])
    elif op == "attention":
        q, k = a[0], a[1]
        key = (_b(q.shape[0] * q.shape[1]), _b(q.shape[2]), _b(k.shape[2]), q.shape[3], bool(kw.get("causal", False)))
    elif op == "attention_varlen":
        q, k, v = a[0], a[1], a[2]
        mq = a[5] if len(a) > 5 else kw.get("max_seqlen_q", 0)
        mk = a[6] if len(a) > 6 else kw.get("max_seqlen_k", 0)
        dense = q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
        host = kw.get("seqlens_q") is not None  # the host lengths are handed over (an entry may need them)
        key = (_b(q.shape[0]), q.shape[1], q.shape[2], _b(mq), _b(mk), bool(kw.get("causal", False)), dense, host)
    elif op == "int4_matmul":
        x, qw = a[0], a[1]
        group = a[4] if len(a) > 4 else kw.get("group_size", 128)
        act = a[6] if len(a) > 6 else kw.get("activation")
        key = (_b(_rows(x)), qw.shape[0], 2 * qw.shape[1], group, act)
    else:
        raise KeyError(f"unknown op {op!r}; known: {', '.join(sorted(candidates()))}")
    # dtypes last; absent arguments (no bias / mask / residual) drop out, which the dtype tuple's length records
    return key + _dtypes(args, kw)


def _key_text(op: str, key: tuple) -> str:
    return op + "|" + "|".join(str(k).replace("torch.", "") for k in key)


# -- timing -----------------------------------------------------------------------------------------------------------
Timer = Callable[[Callable, tuple, dict], float]


def cuda_timer(fn: Callable, args: tuple, kwargs: dict, budget_ms: float = 2.0, max_reps: int = 10) -> float:
    """Median-free quick timing of ``fn(*args, **kwargs)`` in ms per call with CUDA events: one warm-up call
    (compiles and autotunes a Triton kernel), one timed call to size the loop, then up to ``max_reps`` calls
    within about ``budget_ms``."""
    fn(*args, **kwargs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(*args, **kwargs)
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    reps = max(1, min(max_reps, int(budget_ms / once)))
    start.record()
    for _ in range(reps):
        fn(*args, **kwargs)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _device_of(args: Sequence) -> torch.device:
    for t in args:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


_NAMES: dict = {}


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for CUDA devices (cached), else the device type."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _NAMES:
        _NAMES[index] = torch.cuda.get_device_name(index)
    return _NAMES[index]


def _versions() -> str:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    return f"torch={torch.__version__}|triton={tv}|xlmrxl_kernels={VERSION}"


def default_cache_path() -> Path:
    """``XLMRXL_TUNING_CACHE`` if set, else ``$XDG_CACHE_HOME/xlmrxl/tuning.json`` (``~/.cache`` by default)."""
    path = env.get("XLMRXL_TUNING_CACHE")
    if path:
        return Path(path).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xlmrxl" / "tuning.json"


# -- the dispatcher ---------------------------------------------------------------------------------------------------
class Tuner:
    """Chooses, caches and logs. ``timer`` (default ``cuda_timer``), ``cache_path``, ``mode`` ("on"/"off", default
    ``XLMRXL_TUNING``) and ``measure_devices`` (default: CUDA only) are injectable for tests."""

    def __init__(
        self,
        *,
        timer: Timer | None = None,
        cache_path: str | os.PathLike | None = None,
        mode: str | None = None,
        measure_devices: Sequence[str] = ("cuda",),
        defaults: dict | None = None,
    ):
        self.timer = timer or cuda_timer
        self._cache_path = Path(cache_path) if cache_path is not None else None
        self._mode = mode
        self.measure_devices = tuple(measure_devices)
        self.defaults = TUNED_DEFAULTS if defaults is None else defaults
        self.table = _table.build()
        self._memory: dict = {}  # (device, op, key, backend, disabled) -> Choice
        self._disk: dict | None = None  # context -> {key text: record}, loaded once
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        return self._mode if self._mode is not None else str(env.get("XLMRXL_TUNING"))

    @property
    def cache_path(self) -> Path:
        return self._cache_path if self._cache_path is not None else default_cache_path()

    def context(self, device: torch.device) -> str:
        return f"{device_name(device)}|{_versions()}"

    # -- the one call -------------------------------------------------------------------------------------------------
    def choose(
        self, op: str, args: Sequence, kwargs: dict | None = None, *, backend: str = "auto", disabled=None
    ) -> Choice:
        """The implementation for this call (see the module docstring for the policy). ``disabled``: the ops whose
        Triton entry does not take part (default ``XLMRXL_DISABLE_KERNELS``)."""
        kwargs = kwargs or {}
        if disabled is None:
            disabled = env.get("XLMRXL_DISABLE_KERNELS")
        device = _device_of(args)
        key = shape_key(op, args, kwargs)
        mem_key = (device, op, key, backend, op in disabled)
        hit = self._memory.get(mem_key)
        if hit is not None:
            return hit
        with self._lock:
            choice = self._decide(op, key, device, tuple(args), kwargs, backend, op in disabled)
        if choice.source != "capture":  # a stand-in made inside capture is not kept
            self._memory[mem_key] = choice
            self._log(choice, backend)
        return choice

    def _decide(self, op, key, device, args, kwargs, backend: str, disabled: bool) -> Choice:
        reasons: dict = {}
        able = []
        for e in self.table[op]:
            r = e.reasons(device, args, kwargs)
            if not r and disabled and e.kind == "triton":
                r = [why(R.DISABLED, f"{op} is disabled by XLMRXL_DISABLE_KERNELS")]
            if r:
                reasons[e.name] = r[0] if len(r) == 1 else Reason(r[0].code, describe(r))
            else:
                able.append(e)
        if backend == "reference":
            return self._rule(op, key, able, reasons, why(R.BACKEND))
        if backend == "triton":
            kernel = next((e for e in able if e.kind == "triton"), None)
            if kernel is not None:
                return self._pick(op, key, kernel, "backend", reasons, able, why(R.DEFAULT_ORDER))
            return self._rule(op, key, able, reasons, why(R.DEFAULT_ORDER))
        if device.type not in self.measure_devices:
            return self._rule(op, key, able, reasons, why(R.NOT_MEASURED, f"tensors on {device.type}"))
        timed = [e for e in able if e.kind != "reference"]
        if not timed:
            return self._fallback(op, key, reasons)
        if len(timed) == 1:
            return self._pick(op, key, timed[0], "default", reasons, able, why(R.NO_CANDIDATE))
        tuning_on = self.mode == "on"
        text = _key_text(op, key)
        if tuning_on:
            stored = self._disk_lookup(device, text)
            chosen = next((e for e in timed if e.name == stored), None)
            if chosen is not None:
                return self._pick(op, key, chosen, "disk", reasons, able, why(R.SLOWER, "on disk"))
            if not _capturing(device):
                return self._measure(op, key, device, args, kwargs, timed, able, reasons)
            why_default, source = why(R.CAPTURE), "capture"
        else:
            why_default, source = why(R.TUNING_OFF), "default"
        shipped = self._shipped(device, text)
        chosen = next((e for e in timed if e.name == shipped), None)
        if chosen is not None:
            return self._pick(op, key, chosen, "tuned_defaults" if source == "default" else source, reasons, able,
                              why_default)  # fmt: skip
        return self._pick(op, key, timed[0], source, reasons, able, why_default)

    def _rule(self, op, key, able, reasons, because: Reason) -> Choice:
        chosen = next((e for e in able if e.rule), None)
        if chosen is None:
            return self._fallback(op, key, reasons)
        return self._pick(op, key, chosen, "rule", reasons, able, because)

    def _fallback(self, op, key, reasons) -> Choice:
        ref = self.table[op][-1]
        return Choice(op, key, ref, "fallback", {**reasons, "*": why(R.NO_CANDIDATE)})

    @staticmethod
    def _pick(op, key, chosen, source, reasons, able, because: Reason) -> Choice:
        reasons = dict(reasons)
        for e in able:
            if e is not chosen and e.kind != "reference":
                reasons[e.name] = because
        return Choice(op, key, chosen, source, reasons)

    def _measure(self, op, key, device, args, kwargs, timed, able, reasons) -> Choice:
        reasons = dict(reasons)
        timings = {}
        for e in timed:
            try:
                timings[e.name] = float(self.timer(e.fn, args, kwargs))
            except Exception as exc:  # e.g. a PyTorch backend that rejects this shape at run time
                reasons[e.name] = why(R.MEASURE_FAILED, f"{type(exc).__name__}: {str(exc)[:200]}")
        if not timings:
            return self._fallback(op, key, reasons)
        best_name = min(timings, key=timings.get)
        best = next(e for e in timed if e.name == best_name)
        for name, ms in timings.items():
            if name != best_name:
                reasons[name] = why(R.SLOWER, f"{ms:.4f} ms vs {best_name} {timings[best_name]:.4f} ms")
        choice = Choice(op, key, best, "measured", reasons, timings)
        self._disk_store(device, _key_text(op, key), best_name, timings)
        return choice

    @staticmethod
    def _log(choice: Choice, backend: str) -> None:
        """Each choice once, at INFO with the reasons the other entries lost (WARNING where backend='triton' got no
        kernel); backend='reference' is silent (it asked for exactly that)."""
        if backend == "reference":
            return
        if choice.source == "measured":
            times = ", ".join(f"{n} {ms:.4f} ms" for n, ms in sorted(choice.timings_ms.items(), key=lambda kv: kv[1]))
            log_once(f"xlmrxl_kernels: {choice.op} {choice.key}: {choice.name} ({times})")
            return
        lost = choice.why_not()
        level = logging.WARNING if backend == "triton" and choice.candidate.kind != "triton" else logging.INFO
        log_once(
            f"xlmrxl_kernels: {choice.op} {choice.key}: {choice.name} ({choice.source})"
            + (f"; not chosen: {describe(lost)}" if lost else ""),
            level,
        )

    # -- shipped defaults ---------------------------------------------------------------------------------------------
    def _shipped(self, device: torch.device, text: str) -> str | None:
        name = device_name(device)
        for dev, table in self.defaults.items():
            if dev == name or (dev and dev in name):
                if text in table:
                    return table[text]
        return None

    # -- disk ---------------------------------------------------------------------------------------------------------
    def _load_disk(self) -> dict:
        if self._disk is None:
            self._disk = {}
            path = self.cache_path
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict) and isinstance(data.get("entries"), dict):
                    self._disk = data["entries"]
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                logger.warning("xlmrxl_kernels: ignoring the unreadable tuning cache %s (%s)", path, exc)
        return self._disk

    def _disk_lookup(self, device: torch.device, text: str) -> str | None:
        rec = self._load_disk().get(self.context(device), {}).get(text)
        return rec.get("choice") if isinstance(rec, dict) else None

    def _disk_store(self, device: torch.device, text: str, name: str, timings: dict) -> None:
        entries = self._load_disk()
        entries.setdefault(self.context(device), {})[text] = {"choice": name, "ms": timings}
        path = self.cache_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:  # merge with what another process wrote meanwhile
                on_disk = json.loads(path.read_text()).get("entries", {})
                for ctx, recs in on_disk.items():
                    for k, v in recs.items():
                        entries.setdefault(ctx, {}).setdefault(k, v)
            except (OSError, ValueError, AttributeError):
                pass
            fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(
                    {"format": 1, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "entries": entries},
                    f,
                    indent=1,
                    sort_keys=True,
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("xlmrxl_kernels: could not write the tuning cache %s (%s); choices stay in memory", path,
                           exc)  # fmt: skip

    def clear_memory(self) -> None:
        """Forget the in-memory choices (the disk cache is re-read on next use)."""
        self._memory.clear()
        self._disk = None


_DEFAULT: list[Tuner] = []


def default_tuner() -> Tuner:
    """The process-wide tuner used by ``choose`` / ``run``."""
    if not _DEFAULT:
        _DEFAULT.append(Tuner())
    return _DEFAULT[0]


def choose(op: str, args: Sequence, kwargs: dict | None = None, *, backend: str = "auto") -> Choice:
    """The implementation of ``op`` for these arguments (module docstring). Cheap after the first call per key."""
    return default_tuner().choose(op, args, kwargs, backend=backend)


def run(op: str, *args, **kwargs):
    """``choose(op, args, kwargs)(*args, **kwargs)``."""
    return default_tuner().choose(op, args, kwargs)(*args, **kwargs)


def candidates(op: str | None = None):
    """Every op's entries (or one op's), in the table's order."""
    table = default_tuner().table
    return table if op is None else table[op]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xlmrxl_kernels.tuning merge CACHE.json`` (ship measured choices) or ``show`` (print the cache)."""
    from .shipping import main as _main

    return _main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
