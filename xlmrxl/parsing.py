"""One parser each for the dtype, device and size arguments, with one meaning everywhere (API, pipelines, CLI).

- :func:`parse_dtype`: ``None`` (not given: the caller's default, float32 for ``from_pretrained``), ``"auto"`` (the
  dtype the checkpoint was saved in: config.json's ``torch_dtype``/``dtype``, else the first floating tensor; a model
  instance keeps its dtype), a floating ``torch.dtype``, or a name: float32 / fp32 / float, float16 / fp16 / half,
  bfloat16 / bf16, float64 / fp64 / double (``"torch."`` prefix and case ignored).
- :func:`parse_device`: ``None`` means **CPU everywhere** (transformers' ``from_pretrained`` default; the pipelines and
  the CLI follow it). ``"auto"`` picks CUDA when a GPU is usable, else CPU. An int ``i >= 0`` is ``cuda:i`` (``-1`` is
  CPU, as in transformers' pipelines). Asking for CUDA on a CPU-only torch or a machine without a GPU is a
  ``ValueError`` that says how to fix it (instead of torch's ``AssertionError`` at the first allocation).
- :func:`parse_size`: bytes as an int, or a string such as ``"50GB"`` (10^9), ``"500MB"``, ``"100KB"``, ``"2GiB"``
  (2^30).
"""

from __future__ import annotations

import re
from typing import Literal

import torch

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
AUTO = "auto"
DEFAULT_DEVICE = "cpu"  # what device=None means, everywhere

DtypeArg = torch.dtype | str | None
DeviceArg = torch.device | str | int | None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling config.json uses)."""
    return str(dtype).replace("torch.", "")


def parse_dtype(value: DtypeArg, what: str = "dtype") -> torch.dtype | Literal["auto"] | None:
    """``None`` -> None, ``"auto"`` -> ``"auto"``, a floating dtype or one of its names -> that ``torch.dtype``."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value in DTYPE_NAMES.values():
            return value
    elif isinstance(value, str):
        key = value.strip().lower().replace("torch.", "")
        if key == AUTO:
            return AUTO
        if key in DTYPE_NAMES:
            return DTYPE_NAMES[key]
    names = ", ".join(sorted(DTYPE_NAMES))
    raise ValueError(
        f"{what}={value!r} is not a dtype the model can run in; pass a floating torch dtype or one of {names}, "
        "or 'auto' for the dtype stored with the checkpoint"
    )


def _cuda_problem() -> str | None:
    """Why CUDA cannot be used here (None when it can)."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return (
            f"this torch ({torch.__version__}) was built without CUDA; install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/) or pass device='cpu'"
        )
    if not torch.cuda.is_available():
        return "torch has CUDA support but sees no usable GPU (driver or CUDA_VISIBLE_DEVICES?); pass device='cpu'"
    return None


def parse_device(value: DeviceArg) -> torch.device:
    """``None`` -> cpu; ``"auto"`` -> cuda when usable, else cpu; an int -> ``cuda:i`` (``-1``: cpu); else a device."""
    if value is None:
        return torch.device(DEFAULT_DEVICE)
    if isinstance(value, bool):
        raise ValueError(f"device={value!r} is not a device; pass 'cpu', 'cuda', 'cuda:1', 'auto' or a torch.device")
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return torch.device("cuda" if _cuda_problem() is None else "cpu")
    if isinstance(value, int):
        value = "cpu" if value < 0 else f"cuda:{value}"
    try:
        dev = value if isinstance(value, torch.device) else torch.device(str(value).strip())
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"device={value!r} is not a device ({exc}); pass 'cpu', 'cuda', 'cuda:1', 'auto' or a torch.device"
        ) from None
    if dev.type == "cuda":
        problem = _cuda_problem()
        if problem is not None:
            raise ValueError(f"device={str(value)!r} was requested, but {problem}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(value)!r}: there are only {torch.cuda.device_count()} GPU(s) here "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    return dev


_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?\s*")


def parse_size(size: int | str, what: str = "max_shard_size") -> int:
    """An int (bytes) or a string such as ``"5GB"`` (10^9), ``"2GiB"`` (2^30), ``"100KB"``, ``"500MB"`` -> bytes > 0."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise ValueError(f"{what}={size!r} is not a size; pass bytes (int) or a string like '5GB'")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"{what}={size} must be a positive number of bytes")
        return size
    m = _SIZE.fullmatch(size.lower())
    if m is None:
        raise ValueError(
            f"{what}={size!r} is not a size; use bytes (int) or a string like '5GB', '500MB', '100KB' or '2GiB'"
        )
    unit = m.group(2) or "b"
    scale = 1 if unit == "b" else (1024 if "i" in unit else 1000) ** ("kmgt".index(unit[0]) + 1)
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise ValueError(f"{what}={size!r} must be a positive size")
    return value
