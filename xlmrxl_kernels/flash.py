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

import math
from collections.abc import Sequence

import torch

from ._attention_kernels import (  # noqa: F401  (tests and benchmarks/compile_sm90.py reach them here)
    _NARROW,
    _TILED_CONFIGS,
    _WIDE,
    _attn_fwd_kernel,
    _fwd_tiled,
    _prune_tiled,
    _tiled_default,
)
from ._attn_checks import (  # noqa: F401  (check_host_seqlens is this module's too)
    _CHECKED,
    _MAX_CHECKED,
    MAX_HEAD_DIM,
    _check_cu_seqlens,
    _check_qkv,
    _check_varlen_layout,
    _debug_checks,
    _meta,
    _remember,
    check_host_seqlens,
)
from ._decode_kernels import _attn_combine_kernel, _attn_decode_kernel
from ._utils import (
    cdiv,
    check,
    check_same_device,
    device_switch,
    empty,
    empty_as,
    interpreting,
    launch_autotuned,
    next_power_of_2,
    num_sms,
    on_tensor_device,
    plan_cache,
)
from .reference.attention import attention_ref, attention_varlen_ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DECODE_MAX_SQ = 4  # queries per sequence at or below which the one-row-per-program decode kernel runs
_LOG2E = 1.4426950408889634

_DECODE_TILE = 8192  # elements of one (BLOCK_N, BLOCK_D) K or V tile: 64 keys x 128 head-dim lanes


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
    return d0, (0 if rem == 0 else max(16, next_power_of_2(rem)))


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
    return next_power_of_2(max(int(n), 1))


def _launch(q, k, v, out, mask, cu_q, cu_k, *, varlen, **meta) -> None:
    """Pick the decode or the tiled kernel, allocate split-KV buffers when needed, launch. Rows of ``out`` are
    (R, H, D) contiguous: R = B * S_q padded (row = b * S_q + i), R = T_q varlen. ``meta``: ``_make_launch_plan``'s
    keyword arguments (B, H, D, max_seqlen_q/k, S_q/k, T_q/k, q/k/v/o/m_strides, scale, causal, num_splits)."""
    R = out.shape[0] * (out.shape[1] if not varlen else 1)
    plan = _make_launch_plan(q.dtype, q.device, mask is not None, R, varlen=varlen, **meta)
    _run_launch_plan(plan, q, k, v, out, mask, cu_q, cu_k)


def _make_launch_plan(
    dtype, device, has_mask, R, *, B, H, D, max_seqlen_q, max_seqlen_k, S_q, S_k, T_q, T_k, q_strides, k_strides,
    v_strides, o_strides, m_strides, scale, causal, varlen, num_splits=None
) -> tuple:  # fmt: skip
    """Everything about a launch that depends only on metadata: the kernel, its grid, the host-integer arguments
    after the tensors, the constexprs, the split-KV buffers' sizes. ``_run_launch_plan`` launches it."""
    BLOCK_D0, BLOCK_D1 = _head_dim_blocks(D)
    decode = max_seqlen_q <= DECODE_MAX_SQ
    if num_splits is None:
        rows_per_program = 1 if decode else 64
        programs = B * H * cdiv(max_seqlen_q, rows_per_program)
        num_splits = _num_splits(device, programs, None if decode else max_seqlen_k)
    check(
        num_splits >= 1 and (num_splits & (num_splits - 1)) == 0,
        f"num_splits must be a power of two >= 1, got {num_splits}",
    )
    if num_splits > 1:
        # the strides of the contiguous (num_splits, R, H, D) / (num_splits, R, H) fp32 buffers allocated per call
        ps, ls = R * H * D, R * H
        lb, lh, lm = (0 if varlen else S_q * H), 1, H
    else:
        ps, ls, lb, lh, lm = 0, 0, 0, 0, 0
    qk_scale = float(scale) * _LOG2E
    tail = (H, max_seqlen_q, S_q, S_k, T_q, T_k, qk_scale, *q_strides, *k_strides, *v_strides, *o_strides,
            *m_strides, ps, ls, lb, lh, lm)  # fmt: skip
    flags = dict(HEAD_DIM=D, IS_VARLEN=varlen, HAS_MASK=has_mask and not varlen, IS_CAUSAL=bool(causal),
                 NUM_SPLITS=num_splits)  # fmt: skip
    if decode:
        block_d = next_power_of_2(D)
        # SEQ_*_KEY only key the tiled kernel's autotuning: constant here, so they never add compiled variants
        grid = (max_seqlen_q * B * H, num_splits)
        tail = tail + (0, 0)
        kwargs = dict(BLOCK_D=block_d, **flags, **_decode_launch_params(block_d))
    else:
        dot_f32 = interpreting() and dtype == torch.bfloat16  # the interpreter's tl.dot misreads bf16 operands
        grid = lambda meta: (cdiv(max_seqlen_q, meta["BLOCK_M"]) * B * H, num_splits)  # noqa: E731
        tail = tail + (_bucket(max_seqlen_q), _bucket(max_seqlen_k))
        kwargs = dict(
            BLOCK_D0=BLOCK_D0,
            BLOCK_D1=BLOCK_D1,
            PAD_D0=BLOCK_D0 > D,
            PAD_D1=BLOCK_D1 > 0 and BLOCK_D0 + BLOCK_D1 > D,
            DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
            DOT_F32=dot_f32,
            **flags,
        )
    return decode, grid, tail, kwargs, num_splits, R, H, D, device.type == "cuda"


def _run_launch_plan(plan: tuple, q, k, v, out, mask, cu_q, cu_k) -> None:
    """Launch a ``_make_launch_plan`` plan on these tensors (their metadata must be the plan's)."""
    decode, grid, tail, kwargs, num_splits, R, H, D, cuda = plan
    if num_splits > 1:
        opart = torch.empty((num_splits, R, H, D), dtype=torch.float32, device=q.device)
        lpart = torch.empty((num_splits, R, H), dtype=torch.float32, device=q.device)
    else:
        opart = lpart = out
    args = (q, k, v, out, mask, opart, lpart, cu_q, cu_k, *tail)
    if decode:
        _attn_decode_kernel[grid](*args, **kwargs)
    else:
        launch_autotuned(_fwd_tiled, grid, args, kwargs, _tiled_default, cuda)
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
            BLOCK_D=next_power_of_2(D),
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


def _attention_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale=None, causal=False, num_splits=None
):
    ctx = device_switch(q) if isinstance(q, torch.Tensor) else None
    if ctx is not None:
        with ctx:
            return _attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=scale,
                                     causal=causal, num_splits=num_splits)  # fmt: skip
    T = torch.Tensor
    if (type(max_seqlen_q) is int and type(max_seqlen_k) is int and (scale is None or type(scale) is float)
            and isinstance(q, T) and isinstance(k, T) and isinstance(v, T) and isinstance(cu_seqlens_q, T)
            and isinstance(cu_seqlens_k, T) and type(causal) is bool
            and (num_splits is None or type(num_splits) is int)):  # fmt: skip
        # the usual call: one key of the whole layout -> a cached launch plan (checked once per layout)
        key = (q.shape, q.stride(), q.dtype, q.device, k.shape, k.stride(), k.dtype, v.shape, v.stride(),
               v.dtype, cu_seqlens_q.shape, cu_seqlens_q.stride(), cu_seqlens_q.dtype, cu_seqlens_q.device,
               cu_seqlens_k.shape, cu_seqlens_k.stride(), cu_seqlens_k.dtype, cu_seqlens_k.device, k.device, v.device,
               max_seqlen_q, max_seqlen_k, scale, causal, num_splits)  # fmt: skip
        plan = _VARLEN_PLANS.get(key)
        if plan is None:
            _check_varlen_layout(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
            plan = _varlen_plan(q, k, v, cu_seqlens_q, max_seqlen_q, max_seqlen_k, scale, causal, num_splits)
            if len(_VARLEN_PLANS) >= _MAX_CHECKED:
                _VARLEN_PLANS.clear()
            _VARLEN_PLANS[key] = plan
        contiguous, out_shape, launch = plan
        if q.device.type == "cpu" or _debug_checks():
            _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
            _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)
        if contiguous:
            q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out = empty_as(q, out_shape)
        if launch is not None:
            _run_launch_plan(launch, q, k, v, out, q, cu_seqlens_q, cu_seqlens_k)
        return out
    key = ("varlen", _meta(q), _meta(k), _meta(v), _meta(cu_seqlens_q), _meta(cu_seqlens_k),
           _meta(max_seqlen_q), _meta(max_seqlen_k), _meta(scale))  # fmt: skip
    if key not in _CHECKED:
        _check_varlen_layout(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
        _remember(key)
    max_seqlen_q, max_seqlen_k = int(max_seqlen_q), int(max_seqlen_k)
    if q.device.type == "cpu" or _debug_checks():
        _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
        _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)
    contiguous, out_shape, launch = _varlen_plan(
        q, k, v, cu_seqlens_q, max_seqlen_q, max_seqlen_k, scale, causal, num_splits
    )
    if contiguous:
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out = empty(out_shape, dtype=q.dtype, device=q.device)
    if launch is not None:
        _run_launch_plan(launch, q, k, v, out, q, cu_seqlens_q, cu_seqlens_k)
    return out


# (varlen argument layout, max_seqlen_*, scale, causal, num_splits) -> (copy q/k/v?, out shape, launch plan)
_VARLEN_PLANS: dict = plan_cache()


def _varlen_plan(q, k, v, cu_seqlens_q, max_seqlen_q, max_seqlen_k, scale, causal, num_splits) -> tuple:
    """The launch constants of attention_varlen for one argument layout (after its checks)."""
    T_q, H, D = q.shape
    T_k = k.shape[0]
    max_seqlen_q, max_seqlen_k = int(max_seqlen_q), int(max_seqlen_k)
    if scale is None:
        scale = D**-0.5
    B = cu_seqlens_q.shape[0] - 1
    contiguous = any(t.stride(-1) != 1 and t.shape[-1] != 1 for t in (q, k, v))
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out_shape = (T_q, H, D)
    if not (max_seqlen_q > 0 and T_q > 0):
        return contiguous, out_shape, None
    launch = _make_launch_plan(
        q.dtype,
        q.device,
        True,  # varlen passes q as the (unused) mask
        T_q,
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
        o_strides=(0, D, H * D),  # out: a contiguous (T_q, H, D)
        m_strides=(0, 0),
        scale=scale,
        causal=causal,
        varlen=True,
        num_splits=num_splits,
    )
    return contiguous, out_shape, launch
