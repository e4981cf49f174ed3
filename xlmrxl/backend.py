"""The one place that decides, per op, whether a Triton kernel or the PyTorch reference runs.

Choice, in order of precedence: ``backend=`` (``from_pretrained``, ``Backend(...)``), then the environment variable
``XLMRXL_BACKEND``, then ``"auto"``.

- ``"reference"``: always the PyTorch reference (``xlmrxl_kernels.reference``).
- ``"auto"``: the kernel when the tensors are on a CUDA device and Triton imports; otherwise the reference.
- ``"triton"``: the kernel; on CPU tensors only under ``TRITON_INTERPRET=1`` (how CI tests the kernels), an error
  otherwise. A call using a feature a kernel lacks (``output_attentions``, relative positions, ...) still falls back.

Every fallback logs one line (once per op and reason) on the ``xlmrxl`` logger saying why; the reasons are
``xlmrxl.reasons.Reason`` lists (``Backend.kernel_not_supported``), as the route's and the kernels' are.
``Backend.resolve(op, device)`` says which implementation it picked (``Impl.kernel``).
``XLMRXL_DISABLE_KERNELS=op1,op2`` turns single ops off (for bisecting or benchmarking).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from xlmrxl_kernels._utils import interpreting as _interpreting  # reads TRITON_INTERPRET as the kernels do

from .reasons import BACKEND, DEVICE, DISABLED, TRITON, Reason, describe

logger = logging.getLogger("xlmrxl")

BACKENDS = ("auto", "triton", "reference")
_LOGGED: set = set()


class BackendError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def resolve_backend(backend: str | None = None) -> str:
    """Return the effective backend name from the argument, else ``XLMRXL_BACKEND``, else ``"auto"``."""
    name = backend if backend is not None else os.environ.get("XLMRXL_BACKEND", "auto")
    name = str(name).strip().lower()
    if name not in BACKENDS:
        src = "backend=" if backend is not None else "XLMRXL_BACKEND="
        raise ValueError(f"unknown backend {src}{name!r}; choose one of {', '.join(BACKENDS)}")
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

    def __init__(self, name: str | None = None) -> None:
        self.name = resolve_backend(name)
        disabled = os.environ.get("XLMRXL_DISABLE_KERNELS", "")
        self.disabled = {s.strip() for s in disabled.split(",") if s.strip()}
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
        if not self.use_kernel(op, device):
            return Impl(_ref(op), False)
        kern_mod = importlib.import_module(f"xlmrxl_kernels.{KERNEL_MODULES[op]}")
        not_supported = getattr(kern_mod, f"{op}_not_supported", None)
        if not_supported is None:
            return Impl(getattr(kern_mod, op), True)
        return Impl(_GuardedKernel(self, op, getattr(kern_mod, op), not_supported), True)

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
    ) -> torch.Tensor:
        return self.op("attention_varlen", q.device)(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=scale, causal=causal
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
