"""References for ``xlmrxl_kernels.flash`` and ``attention_varlen``: softmax(q kᵀ · scale + mask) v.

``attention_ref(q, k, v, attention_mask=None, *, scale=None, causal=False, upcast=True)``
    q ``(B, H, S_q, D)``, k / v ``(B, H, S_k, D)`` (S_k may exceed S_q: cache or cross-attention).
    ``attention_mask`` ``(B, S_k)`` of any dtype is a *keep* mask (nonzero / True = attend), like transformers' 2D
    ``attention_mask``; it is not an additive bias. ``scale`` defaults to ``D ** -0.5``. ``causal=True`` aligns the
    queries to the end of the keys: query i sees key j iff ``j <= i + S_k - S_q``.
    A query whose keys are all masked returns zeros (as PyTorch SDPA with a bool mask does), never NaN.
    ``upcast=True`` computes in ``promote_types(q.dtype, float32)`` and casts to q's dtype (fp32 for half inputs:
    the kernel's numerics; fp64 stays fp64); ``upcast=False`` computes in the input dtype like transformers' eager
    attention (used by the tests as "PyTorch's own error").

``attention_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False,
upcast=True)``
    packed q ``(T_q, H, D)``, k / v ``(T_k, H, D)``; sequence b is rows ``cu_seqlens[b]:cu_seqlens[b+1]`` (int32
    ``(B+1,)``, flash-attn's varlen convention). Output ``(T_q, H, D)``; rows past ``cu_seqlens_q[-1]`` are zeros.
    Reads ``cu_seqlens`` on the host (one sync): this is an oracle, not a fast path.
"""

from __future__ import annotations

import torch


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has head dim {q.shape[-1]} but k has {k.shape[-1]}; they must match")


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    causal: bool = False,
    upcast: bool = True,
) -> torch.Tensor:
    _check_qkv(q, k, v, 4, "(B, H, S, D)")
    B, H, S_q, D = q.shape
    S_k = k.shape[2]
    if k.shape[:2] != (B, H):
        raise ValueError(f"q is (B={B}, H={H}, ...) but k/v are {tuple(k.shape)}; batch and heads must match")
    if scale is None:
        scale = D**-0.5
    dt = torch.promote_types(q.dtype, torch.float32) if upcast else q.dtype
    scores = torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)) * scale  # (B, H, S_q, S_k)
    keep = torch.ones(B, 1, S_q, S_k, dtype=torch.bool, device=q.device)
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, S_k):
            raise ValueError(f"attention_mask must be (B, S_k) = ({B}, {S_k}), got {tuple(attention_mask.shape)}")
        keep = keep & (attention_mask != 0)[:, None, None, :]
    if causal:
        i = torch.arange(S_q, device=q.device)[:, None]
        j = torch.arange(S_k, device=q.device)[None, :]
        keep = keep & (j <= i + (S_k - S_q))
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A row with no key left is all -inf -> NaN after softmax; such rows return zeros.
    probs = probs.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)
    out = torch.matmul(probs, v.to(dt))
    return out.to(q.dtype)


def attention_varlen_ref(
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
    upcast: bool = True,
    seqlens_q=None,
    seqlens_k=None,
) -> torch.Tensor:
    # seqlens_q / seqlens_k (host lengths, validated by the kernel's launcher) are accepted for the same signature;
    # this oracle reads cu_seqlens on the host anyway
    _check_qkv(q, k, v, 3, "(T, H, D)")
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must both be 1-D (B+1,), got {tuple(cu_seqlens_q.shape)} "
            f"and {tuple(cu_seqlens_k.shape)}"
        )
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    out = torch.zeros_like(q)
    for b in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        if q1 <= q0:
            continue
        qb = q[q0:q1].transpose(0, 1).unsqueeze(0)  # (1, H, L_q, D)
        kb = k[k0:k1].transpose(0, 1).unsqueeze(0)
        vb = v[k0:k1].transpose(0, 1).unsqueeze(0)
        ob = attention_ref(qb, kb, vb, None, scale=scale, causal=causal, upcast=upcast)
        out[q0:q1] = ob[0].transpose(0, 1)
    return out
