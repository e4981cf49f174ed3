"""The checks of ``xlmrxl_kernels.flash``'s launchers: argument layouts (once per layout), host sequence lengths
(O(B) Python, no device sync) and, on CPU or with ``XLMRXL_DEBUG_CHECKS=1``, the values of ``cu_seqlens``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._utils import check, check_dtype, check_same_device, env_flag

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


def _check_qkv(q, k, v, ndim: int, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(t.dim() == ndim, f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    check(k.shape == v.shape, f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    check(q.shape[-1] == k.shape[-1], f"q has head dim {q.shape[-1]} but k/v have {k.shape[-1]}; they must match")
    check(
        1 <= q.shape[-1] <= MAX_HEAD_DIM,
        f"head dim {q.shape[-1]} is outside the kernel's 1..{MAX_HEAD_DIM}; use attention_ref for it",
    )
    check_dtype("q", q, _DTYPES)
    check_dtype("k", k, (q.dtype,))
    check_dtype("v", v, (q.dtype,))
    check_same_device(q=q, k=k, v=v)


def _debug_checks() -> bool:
    return env_flag("XLMRXL_DEBUG_CHECKS")


def _check_cu_seqlens(name: str, cu: torch.Tensor, total: int, max_seqlen: int) -> None:
    """Host-side validation of cu_seqlens values (a device sync when cu is on a GPU, hence only on request)."""
    vals = cu.tolist()
    check(vals[0] == 0, f"{name}[0] must be 0, got {vals[0]}")
    lens = [b - a for a, b in zip(vals[:-1], vals[1:])]
    bad = [i for i, n in enumerate(lens) if n < 0]
    check(not bad, f"{name} must be nondecreasing, but it decreases after index {bad[0] if bad else -1}: {vals}")
    check(vals[-1] <= total, f"{name}[-1] = {vals[-1]} exceeds the {total} packed rows of the tensor")
    longest = max(lens, default=0)
    check(
        longest <= max_seqlen,
        f"a sequence has {longest} rows but max_seqlen for {name} is {max_seqlen}; pass the true maximum length",
    )


def check_host_seqlens(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    seqlens_q: Sequence[int] | None,
    seqlens_k: Sequence[int] | None = None,
) -> None:
    """Validate host-known sequence lengths against the packed tensors (no device sync; O(B) Python).
    ``seqlens_k`` defaults to ``seqlens_q`` (self-attention over the same packing)."""
    if seqlens_k is None:
        seqlens_k = seqlens_q
    if seqlens_q is None:
        seqlens_q = seqlens_k
    B = cu_seqlens_q.shape[0] - 1 if isinstance(cu_seqlens_q, torch.Tensor) and cu_seqlens_q.dim() == 1 else None
    todo = [("seqlens_q", seqlens_q, q.shape[0], max_seqlen_q)]
    if not (  # self-attention over one packing: the k check would repeat the q check exactly
        seqlens_k is seqlens_q
        and k.shape[0] == q.shape[0]
        and type(max_seqlen_q) is int
        and type(max_seqlen_k) is int
        and max_seqlen_k == max_seqlen_q
    ):
        todo.append(("seqlens_k", seqlens_k, k.shape[0], max_seqlen_k))
    for name, lens, rows, mx in todo:
        if type(lens) is not list or not all(type(n) is int for n in lens):
            try:
                lens = [int(n) for n in lens]
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a sequence of host integers (one length per sequence)") from None
        check(B is None or len(lens) == B, f"{name} has {len(lens)} lengths but cu_seqlens describes {B} sequences")
        if lens and min(lens) < 0:
            bad = next(i for i, n in enumerate(lens) if n < 0)
            check(False, f"{name}[{bad}] = {lens[bad]} is negative")
        total = sum(lens)
        check(total <= rows, f"{name} sum to {total} rows but the packed tensor has {rows}")
        longest = max(lens, default=0)
        check(
            longest <= int(mx),
            f"{name} has a sequence of {longest} tokens but max_seqlen is {mx}; pass the true maximum length",
        )


def _meta(t) -> tuple:
    """What the metadata checks of a launcher read from one argument (the key of its cached verdict)."""
    if isinstance(t, torch.Tensor):
        return (t.shape, t.stride(), t.dtype, t.device)
    return (type(t), t if isinstance(t, (int, float, str, type(None))) else id(t))


# argument layouts whose metadata checks passed (values are checked per call where needed): checks run once
_CHECKED: set = set()
_MAX_CHECKED = 4096


def _remember(key: tuple) -> None:
    if len(_CHECKED) >= _MAX_CHECKED:
        _CHECKED.clear()
    _CHECKED.add(key)


def _check_varlen_layout(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale) -> None:
    """attention_varlen's checks of everything but the values of cu_seqlens (run once per argument layout)."""
    _check_qkv(q, k, v, 3, "(T, H, D)")
    H = q.shape[1]
    check(k.shape[1] == H, f"q has {H} heads but k/v have {k.shape[1]}; they must match")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check(
            isinstance(cu, torch.Tensor) and cu.dim() == 1 and cu.shape[0] >= 2,
            f"{name} must be a 1-D tensor of B+1 >= 2 offsets, got "
            f"{tuple(cu.shape) if isinstance(cu, torch.Tensor) else type(cu).__name__}",
        )
        check(cu.dtype == torch.int32, f"{name} must be int32 (flash-attn's convention), got {cu.dtype}")
        check(cu.device == q.device, f"{name} is on {cu.device} but q is on {q.device}; move it to q's device")
    check(
        cu_seqlens_q.shape == cu_seqlens_k.shape,
        f"cu_seqlens_q and cu_seqlens_k must both have B+1 entries, got {cu_seqlens_q.shape[0]} and "
        f"{cu_seqlens_k.shape[0]}",
    )
    check(
        int(max_seqlen_q) >= 0 and int(max_seqlen_k) >= 0,
        f"max_seqlen_q / max_seqlen_k must be >= 0, got {max_seqlen_q} / {max_seqlen_k}",
    )
    if scale is not None:
        check(math.isfinite(float(scale)), f"scale must be a finite number, got {scale}")
