"""Lean launchers: a Triton kernel bound to one call layout, for the op table's ``Entry.bind``.

A binder ``lean_<op>(args, kwargs)`` looks at one call and returns a callable with the op's signature that serves
every later call of the same layout (the same dtypes, devices, weight shapes, contiguous 2-D rows; only the token
count and the tensors themselves may change). Its first call for a token count (and, for attention, a longest
sequence) runs the public launcher once, with all of its checks and Triton's autotuner, and keeps what that launch
used: the grid, the integer arguments and the chosen config (``Autotuner.best_config``). Every later call with that
count allocates the outputs and calls the JIT function with that config directly:

- no ``Autotuner.run`` (no dictionaries built per launch, no key), no re-check, no plan-cache key;
- no ``.tolist()`` / ``.item()`` / device-to-host copy: the caller validates ``cu_seqlens`` once per forward
  (``check_host_seqlens``), never per layer.

A layout the lean path does not cover (more than 2-D rows, float64, empty shapes, a tensor on a CUDA device that is not
the current one) gets the public launcher itself. Nothing is kept from a first call made inside CUDA-graph capture
(the public launcher then runs a default config: the next call outside capture records the tuned one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._utils import _capturing, cdiv, empty_as, interpreting
from .env import get as _env

__all__ = ["BINDERS", "lean_add_layernorm", "lean_attention_varlen", "lean_linear_gelu", "lean_linear_residual"]


def _module(name: str):
    import sys

    return sys.modules[f"xlmrxl_kernels.{name}"]


def _new_empty(t: torch.Tensor, shape=None) -> torch.Tensor:
    return torch.empty_like(t) if shape is None else t.new_empty(shape)


def _alloc() -> Callable:
    """``new_empty``, or the poisoning allocator under ``XLMRXL_POISON=1`` (read once per binding)."""
    return empty_as if _env("XLMRXL_POISON") else _new_empty


def _servable(t: torch.Tensor) -> bool:
    """Launches for ``t`` need no device switch (current CUDA device, or CPU under the interpreter)."""
    if t.device.type == "cuda":
        return t.device.index is None or t.device.index == torch.cuda.current_device()
    return interpreting()


def _config_kwargs(kernel) -> dict | None:
    """The config the autotuned ``kernel``'s last launch used, as launch keyword arguments."""
    cfg = getattr(kernel, "best_config", None)
    return None if cfg is None else cfg.all_kwargs()


# -- linear_gelu / linear_residual --------------------------------------------------------------------------------
def _linear_binder(epilogue: int, public: Callable) -> Callable:
    def bind(args: tuple, kwargs: dict) -> Callable:
        lg = _module("gemm")
        x, weight = args[0], args[1]
        if x.dim() != 2 or weight.dim() != 2 or x.dtype == torch.float64 or weight.shape[1] == 0 or not _servable(x):
            return public
        alloc = _alloc()
        last = [-1, None]  # token count, launch
        tiled, split_k = lg._linear_tiled.fn, lg._linear_split.fn  # the JIT functions (launched without a proxy)

        def record(x, weight, bias, residual):
            plan = lg._make_plan(x, weight, bias, residual, epilogue, None)
            M, N = plan.M, plan.N
            if M == 0 or N == 0 or _capturing(x.device):
                return None
            if plan.split > 1:
                cfg = _config_kwargs(lg._linear_split)
                fin = (plan.finalize_grid, plan.finalize_kwargs)
                return (True, plan.grid, plan.args_tail, {**plan.kwargs, **cfg}, fin, M, N) if cfg else None
            cfg = _config_kwargs(lg._linear_tiled)
            if cfg is None:
                return None
            grid = (cdiv(M, cfg["BLOCK_M"]) * cdiv(N, cfg["BLOCK_N"]), 1)
            return (False, grid, plan.args_tail, {**plan.kwargs, **cfg}, None, M, N)

        def run(x, weight, bias, residual=None):
            M = x.shape[0]
            if M != last[0]:
                y = lg._launch(x, weight, bias, residual, epilogue)
                last[1] = record(x, weight, bias, residual)
                last[0] = M if last[1] is not None else -1
                return y
            split, grid, tail, kw, fin, M, N = last[1]
            y = alloc(x, (M, N))
            b = y if bias is None else bias
            r = y if residual is None else residual
            if not split:
                tiled.run(x, weight, b, r, y, y, *tail, grid=grid, warmup=False, **kw)
                return y
            ws = lg._workspace(x.device, kw["SPLIT_K"] * M * N)
            split_k.run(x, weight, b, r, y, ws, *tail, grid=grid, warmup=False, **kw)
            lg._linear_finalize_kernel[fin[0]](ws, b, r, y, M, N, r.stride(0), r.stride(1), N, 1, **fin[1])
            return y

        return run  # (linear_gelu calls it without a residual)

    return bind


# -- add_layernorm ------------------------------------------------------------------------------------------------
def lean_add_layernorm(args: tuple, kwargs: dict) -> Callable:
    """The lean ``add_layernorm`` for calls like ``args`` (2-D rows, the one-pass kernel)."""
    aln = _module("norm")
    x, residual, weight, bias = args[:4]
    public = aln.add_layernorm
    if x.dim() != 2 or x.dtype == torch.float64 or x.shape[-1] > aln.MAX_FUSED_N or not _servable(x):
        return public
    alloc = _alloc()
    kernel = aln._add_layernorm_kernel
    jit = kernel.fn  # the JIT function (launched without a proxy)
    last = [-1, None]

    def record(x, residual, weight, bias, eps):
        plan = aln._make_plan(x, residual, weight, bias, eps, aln.MAX_FUSED_N, aln._LOOP_BLOCK_N)
        direct = plan[6]
        cfg = _config_kwargs(kernel)
        if direct is None or cfg is None or _capturing(x.device):
            return None
        M, N, _eps, m_bucket, sx, sr, _n, _n2 = direct[0]
        return plan[3], {**plan[5], **cfg}, N, m_bucket, sx, sr

    def run(x, residual, weight, bias, eps=1e-5):
        M = x.shape[0]
        if M != last[0]:
            out = aln._add_layernorm(x, residual, weight, bias, eps)
            last[1] = record(x, residual, weight, bias, eps)
            last[0] = M if last[1] is not None else -1
            return out
        grid, kw, N, m_bucket, sx, sr = last[1]
        y = alloc(x)
        w = x if weight is None else weight
        b = x if bias is None else bias
        if residual is None:
            jit.run(x, x, w, b, y, y, M, N, eps, m_bucket, sx, sr, N, N, grid=grid, warmup=False, **kw)
            return y, x
        h = alloc(x)
        jit.run(x, residual, w, b, y, h, M, N, eps, m_bucket, sx, sr, N, N, grid=grid, warmup=False, **kw)
        return y, h

    return run


# -- attention_varlen ---------------------------------------------------------------------------------------------
def lean_attention_varlen(args: tuple, kwargs: dict) -> Callable:
    """The lean ``attention_varlen`` for calls like ``args``: no host-length or ``cu_seqlens`` check per call (the
    caller validates once per forward), the tiled kernel's config bound."""
    att = _module("flash")
    public = att.attention_varlen
    q = args[0]
    if q.dim() != 3 or q.dtype == torch.float64 or not _servable(q) or kwargs.get("scale") is None:
        return public
    alloc = _alloc()
    tiled, combine = att._fwd_tiled, att._attn_combine_kernel
    last = [-1, -1, None]  # packed rows, longest sequence, launch

    def record(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal):
        contiguous, out_shape, launch = att._varlen_plan(q, k, v, cu_q, max_q, max_k, scale, causal, None)
        if contiguous or launch is None or _capturing(q.device):
            return None
        decode, grid, tail, kw, num_splits, R, H, D, _cuda = launch
        if not decode:
            cfg = _config_kwargs(tiled)
            if cfg is None:
                return None
            kw = {**kw, **cfg}
            grid = grid(kw)
        return decode, grid, tail, kw, num_splits, R, H, D, out_shape, att.next_power_of_2(D)

    def run(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, causal=False, seqlens_q=None, seqlens_k=None):
        if q.shape[0] != last[0] or max_q != last[1]:
            out = att._attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, causal=causal)
            last[2] = record(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal)
            last[0], last[1] = (q.shape[0], max_q) if last[2] is not None else (-1, -1)
            return out
        decode, grid, tail, kw, num_splits, R, H, D, out_shape, block_d = last[2]
        out = alloc(q, out_shape)
        if num_splits > 1:
            opart = q.new_empty((num_splits, R, H, D), dtype=torch.float32)
            lpart = q.new_empty((num_splits, R, H), dtype=torch.float32)
        else:
            opart = lpart = out
        if decode:
            att._attn_decode_kernel[grid](q, k, v, out, q, opart, lpart, cu_q, cu_k, *tail, **kw)
        else:
            tiled.fn.run(q, k, v, out, q, opart, lpart, cu_q, cu_k, *tail, grid=grid, warmup=False, **kw)
        if num_splits > 1:
            rows = out.view(R, H, D)
            combine[(R * H,)](opart, lpart, rows, H, R, opart.stride(0), opart.stride(1), lpart.stride(0),
                              lpart.stride(1), rows.stride(0), HEAD_DIM=D, BLOCK_D=block_d, NUM_SPLITS=num_splits,
                              num_warps=4)  # fmt: skip
        return out

    return run


def _binders() -> dict[str, Callable]:
    lg = _module("gemm")
    return {
        "linear_gelu": _linear_binder(1, lg.linear_gelu),
        "linear_residual": _linear_binder(2, lg.linear_residual),
        "add_layernorm": lean_add_layernorm,
        "attention_varlen": lean_attention_varlen,
    }


BINDERS = _binders()
lean_linear_gelu = BINDERS["linear_gelu"]
lean_linear_residual = BINDERS["linear_residual"]
