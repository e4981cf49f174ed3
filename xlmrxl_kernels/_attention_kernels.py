"""The Triton kernels of ``xlmrxl_kernels.flash`` (tiled flash attention, one-row decode, split-KV merge) and
their autotune configs; the launchers, checks and contract are in ``xlmrxl_kernels.flash``."""

from __future__ import annotations

import triton
import triton.language as tl

from ._tiles import _DYNAMIC
from ._utils import autotune_configs


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


_fwd_tiled = triton.autotune(configs=_TILED_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_tiled})(
    _attn_fwd_kernel
)


def _tiled_default(named_args: dict):
    """The tiled kernel's config when it cannot be tuned (first seen inside CUDA-graph capture): the first of the
    configs that fit these arguments."""
    return _prune_tiled(_TILED_CONFIGS, named_args)[0]
