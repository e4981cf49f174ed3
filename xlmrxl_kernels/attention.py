"""Flash attention forward in Triton: padded ``(B, H, S, D)`` with a key padding mask, and packed varlen ``(T, H, D)``.

    out = softmax(q kᵀ · scale + mask) v         online softmax over key blocks, in exp2 with log2(e) folded into
                                                 the scale; fp32 statistics and accumulators

``attention(q, k, v, attention_mask=None, *, scale=None, causal=False) -> out``
    q ``(B, H, S_q, D)``, k / v ``(B, H, S_k, D)``, one dtype (fp32 / fp16 / bf16), any strides whose last dim is
    contiguous (views into a fused QKV output need no copy; other layouts are copied first). S_k may exceed S_q
    (KV cache, cross-attention). ``attention_mask`` ``(B, S_k)`` bool / int / float is a *keep* mask: nonzero = attend.
    ``scale`` defaults to ``D ** -0.5``. ``causal=True`` aligns the queries to the end of the keys: query i sees key j
    iff ``j <= i + S_k - S_q``. A query with no visible key returns zeros, never NaN.
    ``out`` has shape ``(B, H, S_q, D)`` and q's dtype; it is a transposed view of a contiguous ``(B, S_q, H, D)``
    buffer, so ``out.transpose(1, 2).reshape(B, S_q, H * D)`` (merging heads) costs nothing.

``attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False)``
    packed q ``(T_q, H, D)``, k / v ``(T_k, H, D)`` (last dim contiguous); sequence b owns rows
    ``cu_seqlens[b]:cu_seqlens[b+1]`` (int32 ``(B+1,)`` on q's device, nondecreasing; lengths 0 and 1 are fine);
    ``max_seqlen_*`` are host ints >= every length (as in flash-attn; too small a value leaves query rows unwritten).
    Output ``(T_q, H, D)``; rows past ``cu_seqlens_q[-1]`` are left undefined. Causal aligns each sequence's queries to
    the end of its keys. cu_seqlens are only validated on the host when they live on the CPU (or with
    ``XLMRXL_DEBUG_CHECKS=1``): checking CUDA tensors would cost a device sync on every call.

Head dims: any D in 1..256 (at least 16, 32, 64, 80, 128 are tested). D is split into a power-of-two part and a
remainder block (80 = 64 + 16, 96 = 64 + 32), each its own ``tl.dot``, so D = 80 does not pay for 128.
Decode (S_q <= 4 per sequence): one query row per program, dot products as multiply + reduce in fp32 (no 16-row
MMA tile wasted on one query). Whenever batch x heads x query blocks leaves SMs idle (decode, short prefill), the keys
are split across programs (flash-decoding) and a small kernel merges the partial results by their log-sum-exp.
The decode kernel's key-block width is a fixed heuristic (it is memory-bound), so a growing KV cache never triggers
autotuning; the tiled kernel is autotuned per (bucketed) length, head dim and flags. Under CUDA-graph capture an
untuned shape runs a default config (one warning) instead of benchmarking: warm up once before capturing.
Launchers make the tensors' GPU current, so inputs on a non-current device are fine.
fp32 inputs use exact (IEEE) dots, so they match the fp32 reference to ~1e-6.
Oracles: ``xlmrxl_kernels.reference.attention_ref`` / ``attention_varlen_ref`` (``upcast=True``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._utils import (
    autotune_configs,
    check,
    check_dtype,
    check_same_device,
    empty,
    env_flag,
    interpreting,
    launch_autotuned,
    num_sms,
    on_tensor_device,
)
from .reference.attention import attention_ref, attention_varlen_ref

logger = logging.getLogger("xlmrxl")

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
DECODE_MAX_SQ = 4  # queries per sequence at or below which the one-row-per-program decode kernel runs
_LOG2E = 1.4426950408889634


def _cfg(bm, bn, w, s):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


# Tiled kernel. Every GPU entry was compiled for sm_90 and checked free of register spills for the head dims it
# serves (ptxas via cuobjdump -res-usage): "narrow" for padded head dims <= 96 (16 ... 80), "wide" for 128 and up.
# BLOCK_M >= 16 x num_warps: the chained-dot layout puts every warp along M, so a shorter tile replicates work.
# Interpreter: one small config so tiny test shapes still cross several query and key blocks.
_NARROW = [
    _cfg(128, 64, 8, 3),
    _cfg(128, 128, 8, 3),
    _cfg(128, 32, 4, 3),
    _cfg(64, 64, 4, 3),
    _cfg(64, 32, 4, 4),
    _cfg(64, 128, 4, 3),
]
_WIDE = [_cfg(128, 64, 8, 3), _cfg(128, 64, 8, 2), _cfg(128, 32, 8, 3), _cfg(64, 32, 4, 4), _cfg(64, 64, 4, 2)]
_TILED_CONFIGS = autotune_configs(_NARROW + _WIDE[1:], interpret_config=_cfg(16, 16, 4, 1))
# The decode kernel is not autotuned: it is memory-bound, and a key over the cache length would re-tune (seconds of
# synchronising benchmarks) at every new power of two of S_k during generation. _decode_launch_params picks it.
_DECODE_TILE = 8192  # elements of one (BLOCK_N, BLOCK_D) K or V tile: 64 keys x 128 head-dim lanes

_KEY = ["SEQ_Q_KEY", "SEQ_K_KEY", "HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "IS_VARLEN", "NUM_SPLITS"]


def _cfg_id(c):
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


_NARROW_IDS = {_cfg_id(c) for c in _NARROW}
_WIDE_IDS = {_cfg_id(c) for c in _WIDE}


def _prune_tiled(configs, named_args, **kwargs):
    """Keep the configs that fit the head dim without spilling and whose query tile is not much taller than the
    (bucketed) query length; always keep at least one."""
    get = lambda name, default: kwargs.get(name, named_args.get(name, default))  # noqa: E731
    ids = _NARROW_IDS if get("BLOCK_D0", 64) + get("BLOCK_D1", 0) <= 96 else _WIDE_IDS
    seq_q = get("SEQ_Q_KEY", 1 << 30)
    kept = [c for c in configs if _cfg_id(c) in ids and c.kwargs["BLOCK_M"] <= max(64, seq_q)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])]


@triton.jit
def _load_2d(ptrs, mask_a, mask_b, CHECK_A: tl.constexpr, CHECK_B: tl.constexpr):
    """Load a tile, masking only the axes that can run out of bounds (unmasked loads vectorise best)."""
    if CHECK_A:
        if CHECK_B:
            x = tl.load(ptrs, mask=mask_a & mask_b, other=0.0)
        else:
            x = tl.load(ptrs, mask=mask_a, other=0.0)
    else:
        if CHECK_B:
            x = tl.load(ptrs, mask=mask_b, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _attn_inner(
    acc0,
    acc1,
    l_i,
    m_i,
    q0,
    q1,
    K_base,
    V_base,
    Mask_base,
    stride_kn,
    stride_vn,
    stride_mn,
    offs_m,
    offs_d0,
    offs_d1,
    start,
    end,
    len_k,
    causal_off,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D0: tl.constexpr,
    BLOCK_D1: tl.constexpr,
    PAD_D0: tl.constexpr,
    PAD_D1: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    BOUNDARY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Online-softmax sweep over key blocks [start, end). BOUNDARY: the blocks may cross len_k or the causal
    diagonal, so key bounds and the causal condition are applied; interior blocks skip that work."""
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = (BLOCK_D0 + offs_d1) < HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < len_k
        # k is loaded transposed, (D, BLOCK_N), so q @ kT needs no in-register transpose
        k0 = _load_2d(
            K_base + offs_n[None, :] * stride_kn + offs_d0[:, None], d0_ok[:, None], n_ok[None, :], PAD_D0, BOUNDARY
        )
        if DOT_F32:
            qk = tl.dot(q0.to(tl.float32), k0.to(tl.float32), input_precision=DOT_PRECISION)
        else:
            qk = tl.dot(q0, k0, input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            # the head-dim remainder (16 of D = 80) as its own narrow dot instead of padding D to 128
            k1 = _load_2d(
                K_base + offs_n[None, :] * stride_kn + (BLOCK_D0 + offs_d1)[:, None],
                d1_ok[:, None],
                n_ok[None, :],
                PAD_D1,
                BOUNDARY,
            )
            if DOT_F32:
                qk = tl.dot(q1.to(tl.float32), k1.to(tl.float32), qk, input_precision=DOT_PRECISION)
            else:
                qk = tl.dot(q1, k1, qk, input_precision=DOT_PRECISION)
        qk = qk * qk_scale  # log2(e) is folded into qk_scale: exp2 below is exp of the true logits
        if BOUNDARY:
            valid = n_ok[None, :]
            if IS_CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_off)
            qk = tl.where(valid, qk, float("-inf"))
        if HAS_MASK:
            if BOUNDARY:
                keep = tl.load(Mask_base + offs_n * stride_mn, mask=n_ok, other=0)
            else:
                keep = tl.load(Mask_base + offs_n * stride_mn)
            qk = tl.where(keep[None, :] != 0, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # a row that has seen no visible key yet keeps m = -inf; shift it by 0 so exp2 gives 0, not NaN
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(qk - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        v0 = _load_2d(
            V_base + offs_n[:, None] * stride_vn + offs_d0[None, :], n_ok[:, None], d0_ok[None, :], BOUNDARY, PAD_D0
        )
        if DOT_F32:
            acc0 = tl.dot(p, v0.to(tl.float32), acc0 * alpha[:, None], input_precision=DOT_PRECISION)
        else:
            acc0 = tl.dot(p.to(v0.dtype), v0, acc0 * alpha[:, None], input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            v1 = _load_2d(
                V_base + offs_n[:, None] * stride_vn + (BLOCK_D0 + offs_d1)[None, :],
                n_ok[:, None],
                d1_ok[None, :],
                BOUNDARY,
                PAD_D1,
            )
            if DOT_F32:
                acc1 = tl.dot(p, v1.to(tl.float32), acc1 * alpha[:, None], input_precision=DOT_PRECISION)
            else:
                acc1 = tl.dot(p.to(v1.dtype), v1, acc1 * alpha[:, None], input_precision=DOT_PRECISION)
    return acc0, acc1, l_i, m_i


# token counts and lengths change with every batch: never compile a variant per value (==1, %16 specialisation)
_DYNAMIC = ("max_seqlen_q", "S_q", "S_k", "T_q", "T_k", "stride_lb", "SEQ_Q_KEY", "SEQ_K_KEY")


@triton.jit(do_not_specialize=_DYNAMIC)
def _attn_fwd_kernel(
    # pointers: q/k/v, output, key mask, split-KV partial outputs / log-sum-exps, varlen offsets
    Q,
    K,
    V,
    Out,
    Mask,
    OPart,
    LPart,
    CuQ,
    CuK,
    # sizes (S_q / S_k: padded lengths; T_q / T_k: packed row counts, varlen only)
    H,
    max_seqlen_q,
    S_q,
    S_k,
    T_q,
    T_k,
    qk_scale,
    # strides (b: batch, h: head, m / n: query / key rows; the head dim is contiguous). Varlen passes b strides 0.
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
    # autotune keys only (bucketed lengths)
    SEQ_Q_KEY,
    SEQ_K_KEY,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D0: tl.constexpr,
    BLOCK_D1: tl.constexpr,
    PAD_D0: tl.constexpr,
    PAD_D1: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One (query block, batch x head, key split) per program."""
    num_m = tl.cdiv(max_seqlen_q, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    pid_m = pid % num_m  # query blocks of one (b, h) are adjacent: they share K/V in L2
    bh = pid // num_m
    b = bh // H
    h = bh % H
    if IS_VARLEN:
        # clamp to the tensors, so that bad offsets cannot read or write out of bounds
        q_start = tl.minimum(tl.maximum(tl.load(CuQ + b).to(tl.int64), 0), T_q)
        k_start = tl.minimum(tl.maximum(tl.load(CuK + b).to(tl.int64), 0), T_k)
        len_q = tl.minimum(tl.load(CuQ + b + 1).to(tl.int64), T_q) - q_start
        len_k = tl.minimum(tl.load(CuK + b + 1).to(tl.int64), T_k) - k_start
    else:
        q_start = 0
        k_start = 0
        len_q = S_q
        len_k = S_k
    if pid_m * BLOCK_M >= len_q:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < len_q
    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = tl.arange(0, BLOCK_D1 if BLOCK_D1 > 0 else 16)
    d0_ok = offs_d0 < HEAD_DIM
    d1_ok = (BLOCK_D0 + offs_d1) < HEAD_DIM

    Q_base = Q + b * stride_qb + h * stride_qh + q_start * stride_qm
    K_base = K + b * stride_kb + h * stride_kh + k_start * stride_kn
    V_base = V + b * stride_vb + h * stride_vh + k_start * stride_vn
    Mask_base = Mask + b * stride_mb
    q_ptrs = Q_base + offs_m[:, None] * stride_qm
    q0 = _load_2d(q_ptrs + offs_d0[None, :], m_ok[:, None], d0_ok[None, :], True, PAD_D0)
    if BLOCK_D1 > 0:
        q1 = _load_2d(q_ptrs + (BLOCK_D0 + offs_d1)[None, :], m_ok[:, None], d1_ok[None, :], True, PAD_D1)
    else:
        q1 = q0

    # key range of this query block: [0, hi); blocks below hi_full need no bounds / causal masking
    causal_off = len_k - len_q
    hi = len_k
    hi_full = (len_k // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        last_row = tl.minimum((pid_m + 1) * BLOCK_M, len_q)  # one past the block's last real query row
        hi = tl.maximum(tl.minimum(hi, last_row + causal_off), 0)
        first_vis = tl.maximum(pid_m * BLOCK_M + causal_off + 1, 0)  # keys the block's first row can see
        hi_full = tl.minimum(hi_full, (first_vis // BLOCK_N) * BLOCK_N)
    lo = 0
    if NUM_SPLITS > 1:
        # flash-decoding: this program takes one BLOCK_N-aligned chunk of the keys
        chunk = tl.cdiv(tl.cdiv(len_k, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(hi, lo + chunk)
        hi_full = tl.minimum(hi_full, lo + chunk)
    hi_full = tl.maximum(hi_full, lo)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D1 if BLOCK_D1 > 0 else 16], dtype=tl.float32)
    acc0, acc1, l_i, m_i = _attn_inner(
        acc0,
        acc1,
        l_i,
        m_i,
        q0,
        q1,
        K_base,
        V_base,
        Mask_base,
        stride_kn,
        stride_vn,
        stride_mn,
        offs_m,
        offs_d0,
        offs_d1,
        lo,
        hi_full,
        len_k,
        causal_off,
        qk_scale,
        HEAD_DIM,
        BLOCK_D0,
        BLOCK_D1,
        PAD_D0,
        PAD_D1,
        BLOCK_N,
        HAS_MASK,
        IS_CAUSAL,
        False,
        DOT_PRECISION,
        DOT_F32,
    )
    acc0, acc1, l_i, m_i = _attn_inner(
        acc0,
        acc1,
        l_i,
        m_i,
        q0,
        q1,
        K_base,
        V_base,
        Mask_base,
        stride_kn,
        stride_vn,
        stride_mn,
        offs_m,
        offs_d0,
        offs_d1,
        hi_full,
        hi,
        len_k,
        causal_off,
        qk_scale,
        HEAD_DIM,
        BLOCK_D0,
        BLOCK_D1,
        PAD_D0,
        PAD_D1,
        BLOCK_N,
        HAS_MASK,
        IS_CAUSAL,
        True,
        DOT_PRECISION,
        DOT_F32,
    )

    # rows that saw no key (all masked, or causal with S_q > S_k) have l = 0 and acc = 0: they come out as zeros
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out0 = acc0 / l_safe[:, None]
    out1 = acc1 / l_safe[:, None]
    row_off = b * stride_ob + h * stride_oh + (q_start + offs_m)[:, None] * stride_om
    if NUM_SPLITS > 1:
        # partial results in fp32, merged by _attn_combine_kernel; lse in log2 units (-inf for an empty split)
        P_base = OPart + split * stride_ps + row_off
        tl.store(P_base + offs_d0[None, :], out0, mask=m_ok[:, None] & d0_ok[None, :])
        if BLOCK_D1 > 0:
            tl.store(P_base + (BLOCK_D0 + offs_d1)[None, :], out1, mask=m_ok[:, None] & d1_ok[None, :])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(
            LPart + split * stride_ls + b * stride_lb + h * stride_lh + (q_start + offs_m) * stride_lm, lse, mask=m_ok
        )
    else:
        O_base = Out + row_off
        tl.store(
            O_base + offs_d0[None, :],
            out0.to(Out.dtype.element_ty, fp_downcast_rounding="rtne"),
            mask=m_ok[:, None] & d0_ok[None, :],
        )
        if BLOCK_D1 > 0:
            tl.store(
                O_base + (BLOCK_D0 + offs_d1)[None, :],
                out1.to(Out.dtype.element_ty, fp_downcast_rounding="rtne"),
                mask=m_ok[:, None] & d1_ok[None, :],
            )


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


_fwd_tiled = triton.autotune(configs=_TILED_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_tiled})(
    _attn_fwd_kernel
)


def _tiled_default(named_args: dict):
    """The tiled kernel's config when it cannot be tuned (first seen inside CUDA-graph capture): the first of the
    configs that fit these arguments."""
    return _prune_tiled(_TILED_CONFIGS, named_args)[0]


def _decode_launch_params(block_d: int) -> dict:
    """Key-block width and launch shape of the decode kernel, by heuristic instead of autotuning: the kernel streams
    K and V once, so the tile only has to be wide enough to keep loads in flight without spilling (checked on sm_90
    for 64 keys x 128 lanes at 4 warps). Independent of S_k, so a growing KV cache never recompiles or re-tunes."""
    if interpreting():
        return dict(BLOCK_N=16, num_warps=4, num_stages=1)  # tiny test shapes still cross several key blocks
    return dict(BLOCK_N=max(16, min(128, _DECODE_TILE // block_d)), num_warps=4, num_stages=3)


# ---------------------------------------------------------------------------------------------------------------------
# launchers


def _head_dim_blocks(d: int):
    """(BLOCK_D0, BLOCK_D1): a power-of-two block plus a remainder block (0 if none), each >= 16 for tl.dot."""
    if d <= 16:
        return 16, 0
    d0 = 1 << (d.bit_length() - 1)
    rem = d - d0
    return d0, (0 if rem == 0 else max(16, triton.next_power_of_2(rem)))


def _num_splits(device: torch.device, programs: int, max_seqlen_k: int | None) -> int:
    """Key splits when (batch x heads x query blocks) leaves SMs idle: enough programs to fill the GPU about twice,
    each split >= 64 keys; a power of 2 (few compiled variants). Decode passes ``max_seqlen_k=None``: its split
    count then depends on the launch shape only, so a KV cache growing during ``generate`` never changes the
    (compile-time) split count; splits past the cached keys are empty and cost one early exit."""
    if device.type != "cuda":
        return 1
    sms = num_sms(device)
    if programs >= sms:
        return 1
    cap = 16 if max_seqlen_k is None else max(1, max_seqlen_k // 64)
    want = min(-(-2 * sms // programs), cap, 16)
    return 1 << (want.bit_length() - 1) if want > 1 else 1


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # a copy (one extra read + write) only for layouts the kernel cannot address directly
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _launch(
    q,
    k,
    v,
    out,
    mask,
    cu_q,
    cu_k,
    *,
    B,
    H,
    D,
    max_seqlen_q,
    max_seqlen_k,
    S_q,
    S_k,
    T_q,
    T_k,
    q_strides,
    k_strides,
    v_strides,
    o_strides,
    m_strides,
    scale,
    causal,
    varlen,
    num_splits=None,
):
    """Pick the decode or the tiled kernel, allocate split-KV buffers when needed, launch. Rows of ``out`` are
    (R, H, D) contiguous: R = B * S_q padded (row = b * S_q + i), R = T_q varlen."""
    BLOCK_D0, BLOCK_D1 = _head_dim_blocks(D)
    decode = max_seqlen_q <= DECODE_MAX_SQ
    if num_splits is None:
        rows_per_program = 1 if decode else 64
        programs = B * H * triton.cdiv(max_seqlen_q, rows_per_program)
        num_splits = _num_splits(q.device, programs, None if decode else max_seqlen_k)
    check(
        num_splits >= 1 and (num_splits & (num_splits - 1)) == 0,
        f"num_splits must be a power of two >= 1, got {num_splits}",
    )
    R = out.shape[0] * (out.shape[1] if not varlen else 1)
    if num_splits > 1:
        opart = torch.empty((num_splits, R, H, D), dtype=torch.float32, device=q.device)
        lpart = torch.empty((num_splits, R, H), dtype=torch.float32, device=q.device)
        ps, ls = opart.stride(0), lpart.stride(0)
        lb, lh, lm = (0 if varlen else S_q * H), 1, H
    else:
        opart, lpart, ps, ls, lb, lh, lm = out, out, 0, 0, 0, 0, 0
    qk_scale = float(scale) * _LOG2E
    args = (
        q,
        k,
        v,
        out,
        mask,
        opart,
        lpart,
        cu_q,
        cu_k,
        H,
        max_seqlen_q,
        S_q,
        S_k,
        T_q,
        T_k,
        qk_scale,
        *q_strides,
        *k_strides,
        *v_strides,
        *o_strides,
        *m_strides,
        ps,
        ls,
        lb,
        lh,
        lm,
    )
    flags = dict(
        HEAD_DIM=D,
        IS_VARLEN=varlen,
        HAS_MASK=mask is not None and not varlen,
        IS_CAUSAL=bool(causal),
        NUM_SPLITS=num_splits,
    )
    if decode:
        block_d = triton.next_power_of_2(D)
        # SEQ_*_KEY only key the tiled kernel's autotuning: constant here, so they never add compiled variants
        _attn_decode_kernel[(max_seqlen_q * B * H, num_splits)](
            *args, 0, 0, BLOCK_D=block_d, **flags, **_decode_launch_params(block_d)
        )
    else:
        dot_f32 = interpreting() and q.dtype == torch.bfloat16  # the interpreter's tl.dot misreads bf16 operands
        grid = lambda meta: (triton.cdiv(max_seqlen_q, meta["BLOCK_M"]) * B * H, num_splits)  # noqa: E731
        launch_autotuned(
            _fwd_tiled,
            grid,
            args + (_bucket(max_seqlen_q), _bucket(max_seqlen_k)),
            dict(
                BLOCK_D0=BLOCK_D0,
                BLOCK_D1=BLOCK_D1,
                PAD_D0=BLOCK_D0 > D,
                PAD_D1=BLOCK_D1 > 0 and BLOCK_D0 + BLOCK_D1 > D,
                DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                DOT_F32=dot_f32,
                **flags,
            ),
            _tiled_default,
        )
    if num_splits > 1:
        out_rows = out.view(R, H, D)
        _attn_combine_kernel[(R * H,)](
            opart,
            lpart,
            out_rows,
            H,
            R,
            opart.stride(0),
            opart.stride(1),
            lpart.stride(0),
            lpart.stride(1),
            out_rows.stride(0),
            HEAD_DIM=D,
            BLOCK_D=triton.next_power_of_2(D),
            NUM_SPLITS=num_splits,
            num_warps=4,
        )


def _common_reasons(q, k, v) -> list[str]:
    reasons = []
    if q.dtype not in _DTYPES:
        reasons.append(f"attention kernel takes fp32/fp16/bf16, got q of dtype {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        reasons.append(f"attention kernel needs q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    d = q.shape[-1] if q.dim() else 0
    if not 1 <= d <= MAX_HEAD_DIM:
        reasons.append(f"attention kernel supports head dims 1..{MAX_HEAD_DIM}, got {d}")
    return reasons


def attention_not_supported(q, k, v, attention_mask=None, *, scale=None, causal=False) -> list[str]:
    """Reasons (possibly none) this call cannot take the kernel; the dispatcher then runs the reference."""
    reasons = _common_reasons(q, k, v)
    if attention_mask is not None and attention_mask.is_complex():
        reasons.append(f"attention_mask of dtype {attention_mask.dtype} is not supported")
    return reasons


def attention_varlen_not_supported(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    *,
    scale=None,
    causal=False,
    seqlens_q=None,
    seqlens_k=None,
) -> list[str]:
    """Reasons (possibly none) this call cannot take the kernel; the dispatcher then runs the reference."""
    return _common_reasons(q, k, v)


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


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention on (B, H, S, D) tensors; see the module docstring."""
    if q.dtype == torch.float64:  # no fp64 kernel: the reference computes in fp64 (model.double() parity)
        return attention_ref(q, k, v, attention_mask, scale=scale, causal=causal)
    return _attention(q, k, v, attention_mask, scale=scale, causal=causal)


@on_tensor_device
def _attention(q, k, v, attention_mask=None, *, scale=None, causal=False, num_splits=None):
    """The launcher; ``num_splits`` (a power of two) overrides the split-KV heuristic, for tests."""
    _check_qkv(q, k, v, 4, "(B, H, S, D)")
    B, H, S_q, D = q.shape
    S_k = k.shape[2]
    check(
        k.shape[:2] == (B, H),
        f"q is (B={B}, H={H}, S_q, D) but k/v are {tuple(k.shape)}; batch and head counts must match",
    )
    if scale is None:
        scale = D**-0.5
    check(math.isfinite(float(scale)), f"scale must be a finite number, got {scale}")
    mask = attention_mask
    if mask is not None:
        check(
            tuple(mask.shape) == (B, S_k),
            f"attention_mask must have shape (B, S_k) = ({B}, {S_k}), got {tuple(mask.shape)}; "
            "pass the 2-D keep mask (1 = attend), not a 4-D additive bias",
        )
        check_same_device(q=q, attention_mask=mask)
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)  # same bytes; Triton reads it as an integer
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    # (B, S_q, H, D) buffer: merging heads afterwards is free
    out = empty((B, S_q, H, D), dtype=q.dtype, device=q.device)
    if B * H * S_q > 0:
        _launch(
            q,
            k,
            v,
            out,
            mask if mask is not None else q,
            q,
            q,
            B=B,
            H=H,
            D=D,
            max_seqlen_q=S_q,
            max_seqlen_k=S_k,
            S_q=S_q,
            S_k=S_k,
            T_q=0,
            T_k=0,
            q_strides=(q.stride(0), q.stride(1), q.stride(2)),
            k_strides=(k.stride(0), k.stride(1), k.stride(2)),
            v_strides=(v.stride(0), v.stride(1), v.stride(2)),
            o_strides=(out.stride(0), out.stride(2), out.stride(1)),
            m_strides=(mask.stride(0), mask.stride(1)) if mask is not None else (0, 0),
            scale=scale,
            causal=causal,
            varlen=False,
            num_splits=num_splits,
        )
    return out.transpose(1, 2)


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
    for name, lens, rows, mx in (
        ("seqlens_q", seqlens_q, q.shape[0], max_seqlen_q),
        ("seqlens_k", seqlens_k, k.shape[0], max_seqlen_k),
    ):
        try:
            lens = [int(n) for n in lens]
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a sequence of host integers (one length per sequence)") from None
        check(B is None or len(lens) == B, f"{name} has {len(lens)} lengths but cu_seqlens describes {B} sequences")
        bad = next((i for i, n in enumerate(lens) if n < 0), None)
        check(bad is None, f"{name}[{bad}] = {lens[bad] if bad is not None else 0} is negative")
        total = sum(lens)
        check(total <= rows, f"{name} sum to {total} rows but the packed tensor has {rows}")
        longest = max(lens, default=0)
        check(
            longest <= int(mx),
            f"{name} has a sequence of {longest} tokens but max_seqlen is {mx}; pass the true maximum length",
        )


def attention_varlen(
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
    seqlens_q: Sequence[int] | None = None,
    seqlens_k: Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention over packed variable-length sequences (flash-attn's varlen layout); see the module docstring.

    ``seqlens_q`` / ``seqlens_k``: the per-sequence lengths as host integers, when the caller has them (packing
    computes them before building ``cu_seqlens``): they are validated on the host (B entries, >= 0, sum within the
    packed rows, max within ``max_seqlen_*``) without any device sync; a bad value is a ValueError naming it.
    The caller vouches that ``cu_seqlens_*`` are their cumulative sums."""
    if seqlens_q is not None or seqlens_k is not None:
        check_host_seqlens(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, seqlens_q, seqlens_k)
    if q.dtype == torch.float64:  # no fp64 kernel: the reference computes in fp64
        return attention_varlen_ref(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=scale, causal=causal
        )
    return _attention_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=scale, causal=causal
    )


@on_tensor_device
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


def _attention_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False, num_splits=None
):
    key = ("varlen", _meta(q), _meta(k), _meta(v), _meta(cu_seqlens_q), _meta(cu_seqlens_k), _meta(max_seqlen_q),
           _meta(max_seqlen_k), _meta(scale))  # fmt: skip
    if key not in _CHECKED:
        _check_varlen_layout(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
        _remember(key)
    T_q, H, D = q.shape
    T_k = k.shape[0]
    max_seqlen_q, max_seqlen_k = int(max_seqlen_q), int(max_seqlen_k)
    if q.device.type == "cpu" or _debug_checks():
        _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, T_q, max_seqlen_q)
        _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, T_k, max_seqlen_k)
    if scale is None:
        scale = D**-0.5
    B = cu_seqlens_q.shape[0] - 1
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out = empty((T_q, H, D), dtype=q.dtype, device=q.device)
    if max_seqlen_q > 0 and T_q > 0:
        _launch(
            q,
            k,
            v,
            out,
            q,
            cu_seqlens_q,
            cu_seqlens_k,
            B=B,
            H=H,
            D=D,
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            S_q=0,
            S_k=0,
            T_q=T_q,
            T_k=T_k,
            q_strides=(0, q.stride(1), q.stride(0)),
            k_strides=(0, k.stride(1), k.stride(0)),
            v_strides=(0, v.stride(1), v.stride(0)),
            o_strides=(0, out.stride(1), out.stride(0)),
            m_strides=(0, 0),
            scale=scale,
            causal=causal,
            varlen=True,
            num_splits=num_splits,
        )
    return out
