"""Shared helpers for the kernel files: interpreter detection, autotune configs, output allocation, checks.

Nothing here touches a GPU at import time.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def autotune_configs(configs: Sequence, interpret_config=None) -> list:
    """The autotune list for a kernel: all of ``configs`` on a GPU, one config under the interpreter.

    Several configs fail or crawl under the interpreter, so CI uses ``interpret_config`` (default: the first).
    """
    if interpreting():
        return [interpret_config if interpret_config is not None else configs[0]]
    return list(configs)


def empty(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    """Allocate a kernel output. With ``XLMRXL_POISON=1`` (set by the tests) it is pre-filled with NaN
    (or the dtype's max for integers) so that any element a kernel forgets to write is caught."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if os.environ.get("XLMRXL_POISON", "0") not in ("", "0"):
        if out.is_floating_point():
            out.fill_(float("nan"))
        else:
            out.fill_(torch.iinfo(dtype).max)
    return out


def check(cond: bool, msg: str) -> None:
    """Raise a ValueError with a message a user understands."""
    if not cond:
        raise ValueError(msg)


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")


def check_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of {names}")
