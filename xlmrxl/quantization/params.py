"""Per-group int4 parameters (scale, zero) for one weight matrix: ``rtn`` (torchao's min-max) and ``mse`` (searched).

Both produce the plain format of ``xlmrxl_kernels.reference.int4`` (asymmetric uint4, ``zero_point_domain=float``):
``w_hat = (q - 8) * scale + zero`` per group of ``G`` consecutive input features, ``scale`` / ``zero`` stored in the
weight's dtype and ``q = clamp(round((w - (zero - 8 * scale)) / scale), 0, 15)`` against the stored (rounded) values.

- ``rtn``: ``scale = (max - min) / 15``, ``zero = min + 8 * scale``: ``quantize_int4_ref``, bit for bit.
- ``mse``: data-free. Per group, the clipping range ``[min, max]`` is shrunk to ``[min + a * r, max - b * r]``
  (``r = max - min``) for every ``(a, b)`` on a small grid (``(0, 0)``, i.e. ``rtn``, included), and the pair with the
  least squared reconstruction error of that group wins; then ``refine_steps`` alternating steps (codes fixed ->
  least-squares ``scale`` and ``zero``, rounded to the dtype -> new codes), each kept per group only where it lowers
  the error. So a group's error is never above ``rtn``'s. Vectorised over all groups, in row chunks of bounded memory.

``group_params(w, ...)`` is also what GPTQ calls for each group as its columns are reached (``gptq.py``).
"""

from __future__ import annotations

import torch

from xlmrxl_kernels.reference.int4 import pack_int4, quantize_int4_ref

METHODS = ("rtn", "mse", "gptq")
MSE_DEFAULTS = {"grid": 11, "max_shrink": 0.25, "refine_steps": 4}
_CHUNK = 1 << 22  # fp32 elements per temporary per candidate (16 MB)


def codes(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Integer codes in [0, 15] (fp32) of ``w`` for fp32 parameters ``s`` / ``z`` broadcast against it."""
    return torch.round((w - (z - 8 * s)) / s).clamp_(0, 15)


def _sq_err(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Squared reconstruction error per group (last dim summed), dequantized as the kernels do (one rounding)."""
    t = (w - (z - 8 * s)).div_(s).round_().clamp_(0, 15).sub_(8).mul_(s).add_(z)  # w_hat, in place
    if dtype != torch.float32:
        t = t.to(dtype).float()
    return t.sub_(w).square_().sum(-1)


def _rounded(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    s = ((hi - lo).clamp(min=1e-6) / 15).to(dtype)
    z = (lo + s.float() * 8).to(dtype)
    return s.float(), z.float()


def group_params(
    w: torch.Tensor,
    dtype: torch.dtype,
    method: str = "rtn",
    grid: int = MSE_DEFAULTS["grid"],
    max_shrink: float = MSE_DEFAULTS["max_shrink"],
    refine_steps: int = MSE_DEFAULTS["refine_steps"],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` as fp32 tensors holding ``dtype``-rounded values, shape ``w.shape[:-1] + (1,)``, for fp32
    groups ``w`` (``(..., G)``); ``method`` is ``"rtn"`` or ``"mse"`` (see the module docstring)."""
    lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    s, z = _rounded(lo, hi, dtype)
    if method == "rtn":
        return s, z
    if method != "mse":
        raise ValueError(f"group parameters: method={method!r} must be 'rtn' or 'mse'")
    best = _sq_err(w, s, z, dtype)
    r = hi - lo
    fracs = torch.linspace(0.0, float(max_shrink), max(int(grid), 1), device=w.device).tolist()
    for a in fracs:
        for b in fracs:
            if a == 0.0 and b == 0.0:
                continue
            cs, cz = _rounded(lo + a * r, hi - b * r, dtype)
            e = _sq_err(w, cs, cz, dtype)
            better = e < best
            best = torch.where(better, e, best)
            m = better.unsqueeze(-1)
            s, z = torch.where(m, cs, s), torch.where(m, cz, z)
    for _ in range(int(refine_steps)):
        # codes fixed -> least-squares scale and zero (w ~ x * s + z with x = q - 8), rounded; keep where better
        x = codes(w, s, z) - 8
        xm, wm = x.mean(-1, keepdim=True), w.mean(-1, keepdim=True)
        var = (x - xm).square().sum(-1, keepdim=True)
        cov = ((x - xm) * (w - wm)).sum(-1, keepdim=True)
        ok = var > 0
        ns = torch.where(ok, cov / var.clamp(min=1e-30), s).clamp(min=1e-6 / 15)
        nz = torch.where(ok, wm - ns * xm, z)
        ns, nz = ns.to(dtype).float(), nz.to(dtype).float()
        e = _sq_err(w, ns, nz, dtype)
        better = e < best
        best = torch.where(better, e, best)
        m = better.unsqueeze(-1)
        s, z = torch.where(m, ns, s), torch.where(m, nz, z)
    return s, z


def quantize_weight(
    weight: torch.Tensor, group_size: int = 128, method: str = "rtn", **options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(qweight, scales, zeros)`` of ``weight`` (N, K) in the plain layout; ``method`` ``"rtn"`` or ``"mse"``.

    ``rtn`` is ``quantize_int4_ref`` itself; ``mse`` takes ``grid`` / ``max_shrink`` / ``refine_steps``."""
    if method == "rtn":
        return quantize_int4_ref(weight, group_size)
    if method != "mse":
        raise ValueError(f"quantize_weight: method={method!r} must be 'rtn' or 'mse' (gptq needs the model)")
    unknown = set(options) - set(MSE_DEFAULTS)
    if unknown:
        raise TypeError(f"mse takes options {sorted(MSE_DEFAULTS)}, not {sorted(unknown)}")
    N, K = weight.shape
    quantize_int4_ref(weight[:1], group_size)  # the shape / dtype / group checks, with their messages
    rows = max(1, _CHUNK // K)
    qs, ss, zs = [], [], []
    for i in range(0, N, rows):
        w = weight[i : i + rows].detach().float().reshape(-1, K // group_size, group_size)
        s, z = group_params(w, weight.dtype, "mse", **options)
        qs.append(pack_int4(codes(w, s, z).to(torch.uint8).reshape(-1, K), group_size))
        ss.append(s.squeeze(-1).to(weight.dtype))
        zs.append(z.squeeze(-1).to(weight.dtype))
    return torch.cat(qs), torch.cat(ss).t().contiguous(), torch.cat(zs).t().contiguous()
