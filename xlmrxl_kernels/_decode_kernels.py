"""The one-row-per-program decode kernel and the split-KV merge of ``xlmrxl_kernels.flash`` (the tiled kernel
and the configs are in ``xlmrxl_kernels._attention_kernels``)."""

from __future__ import annotations

import triton
import triton.language as tl

from ._tiles import _DYNAMIC


@triton.jit(do_not_specialize=("R",))
def _attn_combine_kernel(
    OPart,
    LPart,
    Out,
    H,
    R,
    stride_ps,
    stride_pr,
    stride_ls,
    stride_lr,
    stride_or,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """Merge the NUM_SPLITS partial outputs of one (row, head): weights 2^(lse_s - max lse), normalised."""
    pid = tl.program_id(0).to(tl.int64)
    r = pid // H
    h = pid % H
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    lse = tl.load(LPart + offs_s * stride_ls + r * stride_lr + h)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every split empty: all weights 0, output zeros
    w = tl.math.exp2(lse - m)
    denom = tl.sum(w, 0)
    denom = tl.where(denom == 0.0, 1.0, denom)
    o = tl.load(
        OPart + offs_s[:, None] * stride_ps + r * stride_pr + h * HEAD_DIM + offs_d[None, :],
        mask=d_ok[None, :],
        other=0.0,
    )
    out = tl.sum(o * w[:, None], 0) / denom
    tl.store(
        Out + r * stride_or + h * HEAD_DIM + offs_d,
        out.to(Out.dtype.element_ty, fp_downcast_rounding="rtne"),
        mask=d_ok,
    )


@triton.jit(do_not_specialize=_DYNAMIC)
def _attn_decode_kernel(
    # pointers and sizes: as _attn_fwd_kernel
    Q,
    K,
    V,
    Out,
    Mask,
    OPart,
    LPart,
    CuQ,
    CuK,
    H,
    max_seqlen_q,
    S_q,
    S_k,
    T_q,
    T_k,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_mb,
    stride_mn,
    stride_ps,
    stride_ls,
    stride_lb,
    stride_lh,
    stride_lm,
    SEQ_Q_KEY,
    SEQ_K_KEY,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Decode: one query row per program (no 16-row MMA tile for a single query), dot products as broadcast
    multiply + reduce in fp32, keys optionally split across programs (flash-decoding). Memory-bound by design."""
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    i = pid % max_seqlen_q  # rows of one (b, h) are adjacent: they share K/V in L2
    bh = pid // max_seqlen_q
    b = bh // H
    h = bh % H
    if IS_VARLEN:
        q_start = tl.minimum(tl.maximum(tl.load(CuQ + b).to(tl.int64), 0), T_q)
        k_start = tl.minimum(tl.maximum(tl.load(CuK + b).to(tl.int64), 0), T_k)
        len_q = tl.minimum(tl.load(CuQ + b + 1).to(tl.int64), T_q) - q_start
        len_k = tl.minimum(tl.load(CuK + b + 1).to(tl.int64), T_k) - k_start
    else:
        q_start = 0
        k_start = 0
        len_q = S_q
        len_k = S_k
    if i >= len_q:
        return
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # masked lanes fetch nothing: D = 80 reads 80 values, not 128
    q = tl.load(Q + b * stride_qb + h * stride_qh + (q_start + i) * stride_qm + offs_d, mask=d_ok, other=0.0)
    q = q.to(tl.float32) * qk_scale  # scale (with log2 e) folded into q once, not into every score
    K_base = K + b * stride_kb + h * stride_kh + k_start * stride_kn
    V_base = V + b * stride_vb + h * stride_vh + k_start * stride_vn
    hi = len_k
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(hi, i + (len_k - len_q) + 1), 0)
    lo = 0
    if NUM_SPLITS > 1:
        chunk = tl.cdiv(tl.cdiv(len_k, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(hi, lo + chunk)
    m_i = tl.full([], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi  # key bound and causal limit in one compare
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_ok, other=0.0)
        qk = tl.sum(k.to(tl.float32) * q[None, :], 1)
        valid = n_ok
        if HAS_MASK:
            keep = tl.load(Mask + b * stride_mb + offs_n * stride_mn, mask=n_ok, other=0)
            valid = valid & (keep != 0)
        qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: avoid (-inf) - (-inf)
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(qk - m_use)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
        v = tl.load(V_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_ok, other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe
    row_off = b * stride_ob + h * stride_oh + (q_start + i) * stride_om
    if NUM_SPLITS > 1:
        tl.store(OPart + split * stride_ps + row_off + offs_d, out, mask=d_ok)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(LPart + split * stride_ls + b * stride_lb + h * stride_lh + (q_start + i) * stride_lm, lse)
    else:
        tl.store(Out + row_off + offs_d, out.to(Out.dtype.element_ty, fp_downcast_rounding="rtne"), mask=d_ok)
