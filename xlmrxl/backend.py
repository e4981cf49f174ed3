"""The one place that decides, per op, whether a Triton kernel or the PyTorch reference runs.

Choice, in order of precedence: ``backend=`` (``from_pretrained``, ``Backend(...)``), then the environment variable
``XLMRXL_BACKEND``, then ``"auto"``.

- ``"reference"``: always the PyTorch reference (``xlmrxl_kernels.reference``).
- ``"auto"``: on a CUDA device, the measured choice per op and shape bucket (``xlmrxl_kernels.tuning``: our Triton
  kernel or the fastest PyTorch implementation of the same maths, timed once per bucket outside CUDA-graph capture,
  cached in memory and on disk; ``XLMRXL_TUNING=off``: the shipped defaults); elsewhere the reference (nothing is
  timed on a CPU).
- ``"triton"``: the kernel; on CPU tensors only under ``TRITON_INTERPRET=1`` (how CI tests the kernels), an error
  otherwise. A call using a feature a kernel lacks (``output_attentions``, relative positions, ...) still falls back.

Every fallback logs one line (once per op and reason) on the ``xlmrxl`` logger saying why; the reasons are
``xlmrxl.reasons.Reason`` lists (``Backend.kernel_not_supported``), as the route's and the kernels' are.
``Backend.resolve(op, device)`` says which implementation it picked (``Impl.kernel``).
``XLMRXL_DISABLE_KERNELS=op1,op2`` turns single ops off (for bisecting or benchmarking). Every ``XLMRXL_*`` switch
is read through ``xlmrxl_kernels.env`` (strict, cached; ``Backend()`` runs ``env.check_all()``, so a bad value fails
when a model is built, naming the variable and its allowed values).

A measured op (``MeasuredOp``) costs one shape key and one dict lookup per call once its bucket is chosen; the
choice is logged once at INFO with the reasons the other candidates lost, as ``xlmrxl.reasons`` codes
(``tuning_reasons``).
"""

from __future__ import annotations

import importlib
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from xlmrxl_kernels import env
from xlmrxl_kernels import tuning as _tuning
from xlmrxl_kernels._utils import interpreting as _interpreting  # reads TRITON_INTERPRET as the kernels do

from .reasons import (
    BACKEND,
    CAPTURE,
    DEFAULT_ORDER,
    DEVICE,
    DISABLED,
    KERNEL,
    MEASURE_FAILED,
    NO_CANDIDATE,
    NOT_MEASURED,
    SLOWER,
    TRITON,
    TUNING_OFF,
    Reason,
    describe,
)

logger = logging.getLogger("xlmrxl")

BACKENDS = ("auto", "triton", "reference")
_LOGGED: set = set()


class BackendError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def resolve_backend(backend: str | None = None) -> str:
    """Return the effective backend name from the argument, else ``XLMRXL_BACKEND``, else ``"auto"``."""
    if backend is None:
        return str(env.get("XLMRXL_BACKEND"))  # (validated by the env parser)
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend backend={name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def log_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` once per process (fallback reasons would otherwise repeat every layer and call)."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.log(level, message)


_TRITON_NOT_SUPPORTED: list[Reason] | None = None


def triton_not_supported() -> list[Reason]:
    """Why the Triton kernels cannot run in this process (empty when Triton imports)."""
    global _TRITON_NOT_SUPPORTED
    if _TRITON_NOT_SUPPORTED is None:
        try:
            import triton  # noqa: F401  (importing it is the test)

            _TRITON_NOT_SUPPORTED = []
        except Exception as exc:  # pragma: no cover - depends on the machine
            _TRITON_NOT_SUPPORTED = [Reason(TRITON, f"Triton is not importable ({type(exc).__name__}: {exc})")]
    return _TRITON_NOT_SUPPORTED


class Impl(NamedTuple):
    """What ``Backend.resolve`` picked for an op: the function to call and whether it is the kernel (True) or the
    PyTorch reference (False). A kernel whose module declares ``<op>_not_supported`` may still run the reference
    for a call it cannot take (logged)."""

    fn: Callable
    kernel: bool


def _kernel(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(f"xlmrxl_kernels.{module}"), name)


def _ref(name: str) -> Callable:
    return getattr(importlib.import_module("xlmrxl_kernels.reference"), f"{name}_ref")


# op name -> kernel module (the kernel function has the op's name; the reference is `<op>_ref`)
KERNEL_MODULES = {
    "add_layernorm": "add_layernorm",
    "attention": "attention",
    "attention_varlen": "attention",
    "linear_gelu": "linear_gelu",
    "linear_residual": "linear_gelu",
    "int4_matmul": "int4",
}


class Backend:
    """Per-model op dispatcher. ``Backend("auto").add_layernorm(...)`` runs the kernel or the reference."""

    def __init__(self, name: str | None = None, *, tuner: _tuning.Tuner | None = None) -> None:
        env.check_all()  # every XLMRXL_* switch, once per model: a bad value fails here, naming the variable
        self.name = resolve_backend(name)
        self.disabled = set(env.get("XLMRXL_DISABLE_KERNELS"))
        self.tuner = tuner  # None: the process-wide tuner (xlmrxl_kernels.tuning.default_tuner())
        if self.name == "triton":
            missing = triton_not_supported()
            if missing:
                raise BackendError(
                    f"backend='triton' was requested but {describe(missing)}; use backend='auto' or 'reference'"
                )

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    # -- the decision -------------------------------------------------------------------------------------------
    def kernel_not_supported(self, op: str, device: torch.device) -> list[Reason]:
        """Why ``op`` runs its PyTorch reference on ``device`` (empty: it runs its kernel). Raises ``BackendError``
        when ``backend="triton"`` was asked for on tensors the kernels cannot take."""
        if self.name == "reference":
            return [Reason(BACKEND, "backend='reference'")]
        if op in self.disabled:
            return [Reason(DISABLED, f"{op} is disabled by XLMRXL_DISABLE_KERNELS")]
        missing = triton_not_supported()
        if missing:
            return missing
        if device.type == "cuda":
            return []
        if self.name == "triton":
            if _interpreting():
                return []
            raise BackendError(
                f"backend='triton' asked to run {op} on {device.type} tensors, but the Triton kernels need CUDA "
                "tensors "
                "(or TRITON_INTERPRET=1 to run them in the CPU interpreter, for testing only). "
                "Move the model to a GPU, or use backend='auto' / 'reference'."
            )
        return [Reason(DEVICE, f"tensors are on {device.type}; the Triton kernels need a CUDA device")]

    def use_kernel(self, op: str, device: torch.device) -> bool:
        """Decide for one call, logging the reasons once when it falls back (except for backend='reference')."""
        reasons = self.kernel_not_supported(op, device)
        if not reasons:
            return True
        if self.name != "reference":
            level = logging.WARNING if self.name == "triton" else logging.INFO
            if op in self.disabled:
                log_once(f"xlmrxl: {op} runs the PyTorch reference: {describe(reasons)}", level)
            else:  # a reason shared by every op (device, Triton missing): one line, not one per op
                log_once(
                    f"xlmrxl: every op runs the PyTorch reference instead of its Triton kernel: {describe(reasons)}",
                    level,
                )
        return False

    def resolve(self, op: str, device: torch.device) -> Impl:
        """The implementation of ``op`` for tensors on ``device``: the kernel or the reference (same signature)."""
        if op not in KERNEL_MODULES:
            raise KeyError(f"unknown op {op!r}; known: {', '.join(sorted(KERNEL_MODULES))}")
        if self.name == "auto" and device.type in MEASURED_DEVICES:
            return Impl(self._measured(op, device), True)
        if not self.use_kernel(op, device):
            return Impl(_ref(op), False)
        kern_mod = importlib.import_module(f"xlmrxl_kernels.{KERNEL_MODULES[op]}")
        not_supported = getattr(kern_mod, f"{op}_not_supported", None)
        if not_supported is None:
            return Impl(getattr(kern_mod, op), True)
        return Impl(_GuardedKernel(self, op, getattr(kern_mod, op), not_supported), True)

    def _measured(self, op: str, device: torch.device) -> MeasuredOp:
        per_backend = _MEASURED.get(self)
        if per_backend is None:
            per_backend = _MEASURED[self] = {}
        fn = per_backend.get((op, device))
        if fn is None:
            fn = per_backend[(op, device)] = MeasuredOp(op, self.tuner or _tuning.default_tuner())
        return fn

    def op(self, op: str, device: torch.device) -> Callable:
        """The function (kernel or reference, same signature) to run ``op`` with."""
        return self.resolve(op, device).fn

    # -- convenience wrappers (same signatures as the kernels) ---------------------------------------------------
    def add_layernorm(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        eps: float = 1e-5,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.op("add_layernorm", x.device)(x, residual, weight, bias, eps)

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        scale: float | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        return self.op("attention", q.device)(q, k, v, attention_mask, scale=scale, causal=causal)

    def attention_varlen(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        cu_seqlens_k: torch.Tensor,
        max_seqlen_q: int,
        max_seqlen_k: int,
        *,
        scale: float | None = None,
        causal: bool = False,
        seqlens_q: Sequence[int] | None = None,
        seqlens_k: Sequence[int] | None = None,
    ) -> torch.Tensor:
        # every implementation (kernel, reference, measured candidates) takes the host lengths, None included
        return self.op("attention_varlen", q.device)(
            q,
            k,
            v,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
            scale=scale,
            causal=causal,
            seqlens_q=seqlens_q,
            seqlens_k=seqlens_k,
        )

    def linear_gelu(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.op("linear_gelu", x.device)(x, weight, bias)

    def linear_residual(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None
    ) -> torch.Tensor:
        return self.op("linear_residual", x.device)(x, weight, bias, residual)

    def int4_matmul(
        self,
        x: torch.Tensor,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        group_size: int = 128,
        bias: torch.Tensor | None = None,
        activation: str | None = None,
    ) -> torch.Tensor:
        return self.op("int4_matmul", x.device)(
            x, qweight, scales, zeros, group_size=group_size, bias=bias, activation=activation
        )


class _GuardedKernel:
    """A kernel whose module declares ``<op>_not_supported(*args, **kw) -> list[str]``: the reasons, if any, the
    kernel cannot take this call (head dim, dtype, ...). The call then runs the reference, with the reason logged."""

    def __init__(self, backend: Backend, op: str, fn: Callable, not_supported: Callable) -> None:
        self.backend, self.op, self.fn, self.not_supported = backend, op, fn, not_supported

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        reasons = self.not_supported(*args, **kwargs)
        if reasons:
            level = logging.WARNING if self.backend.name == "triton" else logging.INFO
            log_once(f"xlmrxl: {self.op} runs the PyTorch reference: {describe(reasons)}", level)
            return _ref(self.op)(*args, **kwargs)
        return self.fn(*args, **kwargs)


# -- measured choice (backend="auto" on CUDA) ----------------------------------------------------------------------
MEASURED_DEVICES: tuple[str, ...] = ("cuda",)  # device types where "auto" asks the tuner (never a CPU: no timing)
# backend -> {(op, device): MeasuredOp}: one per backend object, kept off it (a model's deepcopy / pickle copies its
# backend; the tuner holds a lock)
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# xlmrxl_kernels.tuning.Reason prefixes -> xlmrxl.reasons codes (one vocabulary for route, backend and kernels)
_TUNING_CODES: tuple[tuple[str, str], ...] = (
    (_tuning.Reason.SLOWER, SLOWER),
    (_tuning.Reason.DISABLED, DISABLED),
    (_tuning.Reason.NOT_SUPPORTED, KERNEL),
    (_tuning.Reason.TUNING_OFF, TUNING_OFF),
    (_tuning.Reason.CAPTURING, CAPTURE),
    (_tuning.Reason.NOT_MEASURED, NOT_MEASURED),
    (_tuning.Reason.DEFAULT_ORDER, DEFAULT_ORDER),
    (_tuning.Reason.FAILED, MEASURE_FAILED),
    (_tuning.Reason.FALLBACK, NO_CANDIDATE),
)


def tuning_reason(candidate: str, text: str) -> Reason:
    """One of the tuner's "why not ``candidate``" texts as a ``Reason`` with an ``xlmrxl.reasons`` code."""
    code = next((c for prefix, c in _TUNING_CODES if str(text).startswith(prefix)), KERNEL)
    return Reason(code, f"{candidate}: {text}")


def tuning_reasons(choice: _tuning.Choice) -> list[Reason]:
    """Why each candidate other than the chosen one does not run (``xlmrxl.reasons`` codes)."""
    return [tuning_reason(name, text) for name, text in choice.reasons.items()]


def _choice_capture_bound(choice: _tuning.Choice) -> bool:
    """True when the choice was a stand-in made inside CUDA-graph capture (not kept: measured later, outside)."""
    return _tuning.Reason.CAPTURING in choice.reasons.values()


class MeasuredOp:
    """``op`` through the measured choice: per call one shape key and one dict lookup (``choices``, per bucket).
    The first call of a bucket asks the tuner, which times the candidates on CUDA outside capture (and logs that
    choice) or takes the cached / shipped / default choice (logged here, once, at INFO). A stand-in chosen inside
    CUDA-graph capture is used for that call only; nothing is timed there."""

    __slots__ = ("op", "tuner", "choices", "_key")

    def __init__(self, op: str, tuner: _tuning.Tuner) -> None:
        self.op, self.tuner = op, tuner
        self.choices: dict[tuple, _tuning.Choice] = {}
        self._key = _tuning.shape_key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        choice = self.choices.get(self._key(self.op, args, kwargs))
        if choice is None:
            choice = self.choose(args, kwargs)
        return choice.candidate.fn(*args, **kwargs)

    def choose(self, args: tuple, kwargs: dict) -> _tuning.Choice:
        """The choice for this call's bucket (the slow path: first call of a bucket)."""
        key = self._key(self.op, args, kwargs)
        choice = self.tuner.choose(self.op, args, kwargs)
        if _choice_capture_bound(choice):
            return choice
        self.choices[key] = choice
        if choice.source == "measured":
            return choice  # the tuner logged it, with the timings
        why = tuning_reasons(choice)
        log_once(
            f"xlmrxl: {self.op} {key}: {choice.name} ({choice.source})"
            + (f"; not chosen: {describe(why)}" if why else "")
        )
        return choice
