"""Fused residual add + LayerNorm (the pre-LN layer's "x = x + sublayer(x); h = LN(x)" step), in Triton.

    h = x + residual                     rounded to the input dtype, as an eager residual add is;
                                          h is ``x`` itself (no copy) when ``residual`` is None
    y = (h - mean) * rsqrt(var + eps) * weight + bias      mean / biased var of h over the last dim, in fp32

``add_layernorm(x, residual, weight, bias, eps=1e-5) -> (y, h)``
    x, residual ``(..., N)`` of one dtype (fp32 / fp16 / bf16), any N >= 1; weight, bias ``(N,)`` of any float dtype
    (upcast to fp32 in the kernel), either may be None. y comes back in x's dtype and shape, contiguous; so does h
    when ``residual`` is given. With ``residual=None``, h *is* ``x`` (same tensor, same strides, possibly not
    contiguous): call ``h.contiguous()`` if a contiguous copy is needed.
    Leading dims are read through one row stride when they collapse to one (``x.view(-1, N)`` works and the last dim
    is contiguous); otherwise the input is copied to contiguous first (one extra read + write of that input).

Memory traffic: for N <= ``MAX_FUSED_N`` (16384) a program keeps whole rows in registers, so x and residual are read
once and y, h written once (the minimum). Larger rows take a two-pass loop (chunked Welford statistics, then
normalise), which re-reads h once. Oracle: ``xlmrxl_kernels.reference.add_layernorm_ref`` (``upcast=True``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    autotune_configs,
    cdiv,
    check,
    check_dtype,
    check_same_device,
    device_switch,
    empty,
    empty_as,
    launch_autotuned,
    next_power_of_2,
    plan_cache,
)
from .reference.add_layernorm import add_layernorm_ref

MAX_FUSED_N = 16384  # widest row kept whole in registers (64 KiB of fp32 per program)
_LOOP_BLOCK_N = 4096  # chunk width of the two-pass kernel for wider rows
_TILE = 4096  # target elements per program in the one-pass kernel (several short rows per program)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_CONFIGS = autotune_configs([triton.Config({}, num_warps=w) for w in (8, 4, 16, 32)])


def _prune_warps(configs, named_args, **kwargs):
    """Keep warp counts giving 4-16 elements of the tile per thread: fewer wastes threads, more spills registers
    (checked on sm_90: a 16384-wide row spills at 16 warps, not at 32)."""
    tile = kwargs.get("BLOCK_M", 1) * kwargs.get("BLOCK_N", 1)
    kept = [c for c in configs if 4 <= tile // (32 * c.num_warps) <= 16]
    if kept:
        return kept
    by_warps = sorted(configs, key=lambda c: c.num_warps)
    return [by_warps[0] if tile < 4 * 32 * by_warps[0].num_warps else by_warps[-1]]


@triton.autotune(
    configs=_CONFIGS,
    key=["M_BUCKET", "N", "BLOCK_M", "BLOCK_N", "HAS_RES"],
    prune_configs_by={"early_config_prune": _prune_warps},
)
@triton.jit(do_not_specialize=("M", "M_BUCKET"))  # row counts: one binary for every M, tuned per M bucket
def _add_layernorm_kernel(
    # pointers
    X,
    R,
    W,
    B,
    Y,
    H,
    # sizes (M_BUCKET only keys the autotune cache)
    M,
    N,
    eps,
    M_BUCKET,
    # row strides (the last dim is contiguous)
    stride_x,
    stride_r,
    stride_y,
    stride_h,
    # meta-parameters
    HAS_RES: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """BLOCK_M whole rows per program; every row is read once and written once."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N  # BLOCK_N is N rounded up to a power of two
    mask = (rows[:, None] < M) & col_ok[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # round the sum to the input dtype first (nearest-even, as torch does): h is what an eager residual add
        # produces, and the LN normalises exactly that
        h = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty, fp_downcast_rounding="rtne")
        tl.store(H + rows[:, None] * stride_h + cols[None, :], h, mask=mask)
        hf = h.to(tl.float32)
    else:
        hf = x.to(tl.float32)
    mean = tl.sum(hf, axis=1) / N
    # two-pass variance on registers (no E[h^2] - mean^2 cancellation); padded lanes must not count
    d = tl.where(mask, hf - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = d * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = y.to(Y.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y, mask=mask)


@triton.jit
def _add_layernorm_loop_kernel(
    # pointers
    X,
    R,
    W,
    B,
    Y,
    H,
    # sizes
    N,
    eps,
    # row strides
    stride_x,
    stride_r,
    stride_y,
    stride_h,
    # meta-parameters
    HAS_RES: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One row per program for rows wider than MAX_FUSED_N: pass 1 adds, stores h and merges per-chunk (mean, M2)
    with Chan's formula; pass 2 re-reads h and normalises."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mean = tl.zeros([], dtype=tl.float32)
    m2 = tl.zeros([], dtype=tl.float32)
    count = tl.zeros([], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        mask = offs < N
        x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
        if HAS_RES:
            r = tl.load(R + row * stride_r + offs, mask=mask, other=0.0)
            h = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty, fp_downcast_rounding="rtne")
            tl.store(H + row * stride_h + offs, h, mask=mask)
            hf = h.to(tl.float32)
        else:
            hf = x.to(tl.float32)
        n_b = tl.minimum(N - start, BLOCK_N).to(tl.float32)
        mean_b = tl.sum(hf, axis=0) / n_b
        d = tl.where(mask, hf - mean_b, 0.0)
        m2_b = tl.sum(d * d, axis=0)
        # Chan et al. merge of (count, mean, M2) with the chunk's: stable for any row length
        tot = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / tot)
        m2 = m2 + m2_b + delta * delta * (count * n_b / tot)
        count = tot
    rstd = 1.0 / tl.sqrt(m2 / N + eps)
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        mask = offs < N
        if HAS_RES:
            # h was written by this same program in pass 1 (program order makes it visible)
            hf = tl.load(H + row * stride_h + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            hf = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        y = (hf - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


def add_layernorm_not_supported(x, residual, weight, bias, eps=1e-5) -> list[str]:
    """Reasons (possibly none) this call cannot take the kernel; the dispatcher then runs the reference."""
    reasons = []
    if x.dtype not in _DTYPES:
        reasons.append(f"add_layernorm kernel takes fp32/fp16/bf16, got x of dtype {x.dtype}")
    if residual is not None and residual.dtype != x.dtype:
        reasons.append(f"add_layernorm kernel needs residual in x's dtype ({x.dtype}), got {residual.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            reasons.append(f"add_layernorm kernel needs a floating-point {name}, got {t.dtype}")
    return reasons


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as (M, n) rows with a contiguous last dim, without a copy when the leading dims collapse."""
    if t.stride(-1) == 1 or t.shape[-1] == 1:
        try:
            t2 = t.view(-1, n)
            if t2.stride(-1) == 1 or n == 1:
                return t2
        except RuntimeError:
            pass
    return t.contiguous().view(-1, n)


def _check_args(x, residual, weight, bias, eps, dtypes) -> None:
    """Every check of a call, shared by the kernel and the fp64 (reference) route."""
    check(x.dim() >= 1 and x.shape[-1] >= 1, f"x must have shape (..., N) with N >= 1, got {tuple(x.shape)}")
    check_dtype("x", x, dtypes)
    N = x.shape[-1]
    if residual is not None:
        check(
            residual.shape == x.shape,
            f"residual has shape {tuple(residual.shape)} but x has shape {tuple(x.shape)}; they must match",
        )
        check_dtype("residual", residual, (x.dtype,))
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check(
                t.dim() == 1 and t.shape[0] == N,
                f"{name} must have shape ({N},) to match x's last dim, got {tuple(t.shape)}",
            )
            check(t.is_floating_point(), f"{name} must be floating point, got {t.dtype}")
    check_same_device(x=x, residual=residual, weight=weight, bias=bias)
    check(float(eps) >= 0, f"eps must be >= 0, got {eps}")


def add_layernorm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(LayerNorm(x + residual) * weight + bias, x + residual)``; see the module docstring."""
    if x.dtype == torch.float64:  # no fp64 kernel: the reference computes in fp64, after the same checks
        _check_args(x, residual, weight, bias, eps, (torch.float64,))
        return add_layernorm_ref(x, residual, weight, bias, eps)
    return _add_layernorm(x, residual, weight, bias, eps)


# (shapes, strides, dtypes, devices, eps, limits) -> launch constants: a layout is checked once, then reused
_PLANS: dict = plan_cache()
_MAX_PLANS = 4096


def _make_plan(x, residual, weight, bias, eps, max_fused_n, loop_block_n) -> tuple:
    _check_args(x, residual, weight, bias, eps, _DTYPES)
    N = x.shape[-1]
    M = x.numel() // N
    common = dict(HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None)
    if N <= max_fused_n:
        BLOCK_N = next_power_of_2(N)
        BLOCK_M = max(1, min(_TILE // BLOCK_N, next_power_of_2(max(M, 1))))
        kwargs = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, **common)
        m_bucket = min(next_power_of_2(max(M, 1)), 65536)
        direct = None
        rows = (x,) if residual is None else (x, residual)
        if (
            M > 0
            and all(t.dim() == 2 and (t.stride(1) == 1 or N == 1) for t in rows)
            and all(t is None or t.is_contiguous() for t in (weight, bias))
        ):
            # what the general path passes, read off at plan time: (x2, r2) are x, residual themselves
            r_stride = x.stride(0) if residual is None else residual.stride(0)
            direct = ((M, N, float(eps), m_bucket, x.stride(0), r_stride, N, N), x.device.type == "cuda")
        return True, N, M, (cdiv(M, BLOCK_M),), m_bucket, kwargs, direct
    BLOCK_N = min(next_power_of_2(loop_block_n), next_power_of_2(N))
    return False, N, M, (M,), 0, dict(BLOCK_N=BLOCK_N, num_warps=8, **common), None


def _warps_default(named):
    return _prune_warps(_CONFIGS, named, **named)[0]


def _add_layernorm(
    x, residual, weight, bias, eps=1e-5, *, max_fused_n: int = MAX_FUSED_N, loop_block_n: int = _LOOP_BLOCK_N
):
    """The launcher; ``max_fused_n`` / ``loop_block_n`` exist so that tests can reach the wide-row path. Checks and
    launch constants are computed once per argument layout (``_PLANS``)."""
    ctx = device_switch(x)
    if ctx is not None:
        with ctx:
            return _add_layernorm(x, residual, weight, bias, eps, max_fused_n=max_fused_n, loop_block_n=loop_block_n)
    key = (
        x.shape,
        x.stride(),
        x.dtype,
        x.device,
        None if residual is None else (residual.shape, residual.stride(), residual.dtype, residual.device),
        None if weight is None else (weight.shape, weight.stride(), weight.dtype, weight.device),
        None if bias is None else (bias.shape, bias.stride(), bias.dtype, bias.device),
        eps,
        max_fused_n,
        loop_block_n,
    )
    plan = _PLANS.get(key)
    if plan is None:
        plan = _make_plan(x, residual, weight, bias, eps, max_fused_n, loop_block_n)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    direct = plan[6]
    if direct is not None:
        # 2-D rows with a contiguous last dim, contiguous weight and bias: the tensors go to the kernel as they are
        tail, cuda = direct
        y = empty_as(x)
        if residual is None:
            args = (x, x, x if weight is None else weight, x if bias is None else bias, y, y, *tail)
            h = x
        else:
            h = empty_as(x)
            args = (x, residual, x if weight is None else weight, x if bias is None else bias, y, h, *tail)
        launch_autotuned(_add_layernorm_kernel, plan[3], args, plan[5], _warps_default, cuda)
        return y, h
    fused, N, M, grid, m_bucket, kwargs, _ = plan
    y = empty(x.shape, dtype=x.dtype, device=x.device)
    h = empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else x
    if M == 0:
        return y, h
    x2 = _rows(x, N)
    r2 = _rows(residual, N) if residual is not None else x2
    y2 = y.view(-1, N)
    h2 = h.view(-1, N) if residual is not None else y2  # never written when there is no residual
    w = weight.contiguous() if weight is not None else x2  # dummy pointer, unused (HAS_W False)
    b = bias.contiguous() if bias is not None else x2
    strides = (x2.stride(0), r2.stride(0), N, N)
    if fused:
        launch_autotuned(
            _add_layernorm_kernel,
            grid,
            (x2, r2, w, b, y2, h2, M, N, float(eps), m_bucket, *strides),
            kwargs,
            _warps_default,
        )
    else:
        _add_layernorm_loop_kernel[grid](x2, r2, w, b, y2, h2, N, float(eps), *strides, **kwargs)
    return y, h
