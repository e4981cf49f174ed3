"""Reference for ``xlmrxl_kernels.norm``: residual add fused with the next LayerNorm (pre-LN layer).

    h = x + residual            (in the input dtype, as transformers adds residuals; h is x itself if residual is None)
    y = (h - mean(h)) / sqrt(var(h) + eps) * weight + bias      (over the last dim, biased variance)

Shapes ``(..., N)``; ``weight``/``bias`` ``(N,)`` (either may be None: scale 1 / shift 0). Returns ``(y, h)``, both in
the input dtype. ``upcast=True`` (default) computes the LayerNorm in ``promote_types(dtype, float32)`` (fp32 for
half inputs, what the kernel does; fp64 stays fp64) and casts the result; ``upcast=False`` runs it in the input
dtype, as ``nn.LayerNorm`` would in a half-precision model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def add_layernorm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    *,
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is not None and residual.shape != x.shape:
        raise ValueError(
            f"residual has shape {tuple(residual.shape)} but x has shape {tuple(x.shape)}; they must match"
        )
    h = x if residual is None else x + residual.to(x.dtype)
    n = x.shape[-1]
    if upcast:
        ct = torch.promote_types(x.dtype, torch.float32)  # never below the input's precision (fp64 stays fp64)
        w = None if weight is None else weight.to(ct)
        b = None if bias is None else bias.to(ct)
        y = F.layer_norm(h.to(ct), (n,), w, b, eps).to(x.dtype)
    else:
        w = None if weight is None else weight.to(x.dtype)
        b = None if bias is None else bias.to(x.dtype)
        y = F.layer_norm(h, (n,), w, b, eps)
    return y, h
