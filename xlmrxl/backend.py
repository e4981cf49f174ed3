"""The model's side of the op choice: ``backend=`` and the per-model ``Backend`` that asks the one op table.

Choice, in order of precedence: ``backend=`` (``from_pretrained``, ``Backend(...)``), then the environment variable
``XLMRXL_BACKEND``, then ``"auto"``; the choosing itself is ``xlmrxl_kernels.tuning.choose`` over the op table
``xlmrxl_kernels.table`` (Triton first, PyTorch's own, the reference last):

- ``"reference"``: no Triton kernel; by rule the PyTorch maths of the reference (SDPA per sequence for the packed
  attention, ...), the reference (``xlmrxl_kernels.reference``) where nothing else takes the call.
- ``"auto"``: on a CUDA device, the measured choice per op and shape bucket (timed once per bucket outside
  CUDA-graph capture, cached in memory and on disk; ``XLMRXL_TUNING=off``: the shipped defaults); elsewhere the rule
  (nothing is timed on a CPU).
- ``"triton"``: the kernel; on CPU tensors only under ``TRITON_INTERPRET=1`` (how CI tests the kernels), an error
  otherwise. A call using a feature a kernel lacks (``output_attentions``, float64, ...) gets the rule (a warning).

``XLMRXL_DISABLE_KERNELS=op1,op2`` takes single ops' Triton kernels out (bisecting, benchmarking). Each choice is
logged once with the reasons the other entries lost (``Reason`` codes, ``xlmrxl.reasons``). The model's switches are
read through ``xlmrxl.env`` (strict, cached; ``Backend()`` checks them all, so a bad value fails when a model is
built, naming the variable and its allowed values). The fast path stores the bound callables a choice gives
(``xlmrxl.fast.layer.Ops``): a layer's call evaluates no predicate and builds no key.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch

from xlmrxl_kernels import tuning as _tuning
from xlmrxl_kernels._utils import interpreting as _interpreting  # reads TRITON_INTERPRET as the kernels do
from xlmrxl_kernels.logs import log_once as _log_once

from . import env
from .reasons import BACKEND, DEVICE, DISABLED, TRITON, Reason, describe

logger = logging.getLogger("xlmrxl")

BACKENDS = ("auto", "triton", "reference")


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


log_once = functools.partial(_log_once, log=logger)  # the one log_once, on the xlmrxl logger


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


OPS = ("add_layernorm", "attention", "attention_varlen", "linear_gelu", "linear_residual", "int4_matmul")


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
        """Why ``op`` cannot run its Triton kernel on ``device`` whatever the call (empty: the op table may choose
        it). Raises ``BackendError`` when ``backend="triton"`` was asked for on tensors the kernels cannot take."""
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

    def choose(self, op: str, args: Sequence, kwargs: dict | None = None) -> _tuning.Choice:
        """The op table's choice for this call (``xlmrxl_kernels.tuning.choose`` with this backend's policy);
        ``.bind(args, kwargs)`` gives the callable to store for calls like it."""
        if op not in OPS:
            raise KeyError(f"unknown op {op!r}; known: {', '.join(OPS)}")
        if self.name != "reference":
            why = self.kernel_not_supported(op, _device_of(args))  # (raises: backend='triton' on CPU, no interpreter)
            if why:
                level = logging.WARNING if self.name == "triton" else logging.INFO
                what = op if op in self.disabled else "every op"  # a device-wide reason: one line, not one per op
                log_once(f"xlmrxl: {what} runs the PyTorch reference (or its maths) instead of Triton: {describe(why)}",
                         level)  # fmt: skip
        tuner = self.tuner or _tuning.default_tuner()
        return tuner.choose(op, args, kwargs, backend=self.name, disabled=self.disabled)

    def run(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """``op`` on these arguments through the table's choice (the convenience path; the fast path binds)."""
        return self.choose(op, args, kwargs).fn(*args, **kwargs)

    # -- convenience wrappers (same signatures as the kernels) ---------------------------------------------------
    def add_layernorm(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        eps: float = 1e-5,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run("add_layernorm", x, residual, weight, bias, eps)

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
        return self.run("attention", q, k, v, attention_mask, scale=scale, causal=causal)

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
        return self.run(
            "attention_varlen",
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
        return self.run("linear_gelu", x, weight, bias)

    def linear_residual(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None
    ) -> torch.Tensor:
        return self.run("linear_residual", x, weight, bias, residual)

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
        return self.run(
            "int4_matmul", x, qweight, scales, zeros, group_size=group_size, bias=bias, activation=activation
        )


def _device_of(args: Sequence) -> torch.device:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
