"""PyTorch oracles of the GEMM-epilogue kernels in ``xlmrxl_kernels.gemm``.

- ``linear_gelu_ref(x, weight, bias)``          = ``gelu(x @ weight.T + bias)`` with exact erf GELU;
- ``linear_residual_ref(x, weight, bias, residual)`` = ``residual + x @ weight.T + bias``.

``x`` is ``(..., K)``, ``weight`` ``(N, K)`` as ``nn.Linear`` stores it, ``bias`` ``(N,)`` or None, ``residual``
``(..., N)``. By default each runs in the inputs' dtype exactly as transformers' modules do (``F.linear`` then
``F.gelu`` / ``+``, rounding after each step); this is what the model layer uses on CPU. ``upcast=True`` computes
in ``promote_types(dtype, float32)`` and rounds once at the end, which is what the kernels do (fp32 accumulator and
epilogue); fp64 inputs stay fp64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (N, K) as nn.Linear stores it, got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x has {x.shape[-1]} features in its last dim but weight is {tuple(weight.shape)} (N, K); "
            "they must agree on K"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def linear_gelu_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, upcast: bool = False
) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` (exact erf GELU), in ``x.dtype``."""
    _check(x, weight, bias)
    if upcast:
        ct = torch.promote_types(x.dtype, torch.float32)
        b = None if bias is None else bias.to(ct)
        return F.gelu(F.linear(x.to(ct), weight.to(ct), b)).to(x.dtype)
    return F.gelu(F.linear(x, weight, bias))


def linear_residual_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, *, upcast: bool = False
) -> torch.Tensor:
    """``residual + x @ weight.T + bias``, in ``x.dtype``."""
    _check(x, weight, bias)
    expected = tuple(x.shape[:-1]) + (weight.shape[0],)
    if tuple(residual.shape) != expected:
        raise ValueError(f"residual must have shape {expected} (x's leading dims, N), got {tuple(residual.shape)}")
    if upcast:
        ct = torch.promote_types(x.dtype, torch.float32)
        b = None if bias is None else bias.to(ct)
        return (residual.to(ct) + F.linear(x.to(ct), weight.to(ct), b)).to(x.dtype)
    return residual + F.linear(x, weight, bias)
