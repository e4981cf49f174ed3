"""int4 group-wise weight-only quantization and the int4-weight matmul kernel.

    quantize_int4(weight, group_size=128)             -> (qweight, scales, zeros)
    dequantize_int4(qweight, scales, zeros, group_size=128) -> weight  (N, K)
    int4_matmul(x, qweight, scales, zeros, group_size=128, bias=None, activation=None)
        = act(x @ dequantize_int4(qweight, scales, zeros).T + bias),  act in {None, "gelu" (exact erf)}

Maths: torchao's int4 weight-only (tinygemm) convention, zero point in the float domain:
``w_hat = (q - 8) * scale + zero`` with ``scale = (max - min) / 15`` and ``zero = min + 8 * scale`` per group of
``group_size`` consecutive ``k``. Packed layout (``xlmrxl_kernels.reference.int4`` has the full statement):
``qweight`` uint8 ``(N, K // 2)`` where byte ``j`` of group ``g`` holds ``k = g*G + j`` (low nibble) and
``k = g*G + G/2 + j`` (high nibble); ``scales`` / ``zeros`` ``(K // G, N)`` in the weight's dtype. Unpacking a
group's ``G/2`` bytes therefore yields its two K-halves as two dense tiles, each met by a contiguous slice of ``x``.

The kernel streams packed weights, dequantizes inside the K loop in registers (mask / shift, the exponent trick
``bits(0x4B000000 | q) - (2**23 + 8) = q - 8`` instead of int->float conversions, one FMA with the group's scale and
zero), and computes ``y.T = W_hat @ x.T`` so the dequantized tile is the MMA's register operand and a few tokens
fill the MMA's narrow side. Two launch shapes:

- ``M <= 64`` (latency): narrow token tile, ``BLOCK_N = 64`` output features per program, and split-K across
  whole groups when the output tiles alone cannot fill the GPU: each split stores its fp32 partial tile into its
  own slice of a workspace (plain stores, no atomics, nothing to zero), then a small kernel sums the splits in a
  fixed order, adds the bias, applies GELU and rounds (with no split the epilogue is fused). Results are
  therefore deterministic, and the autotuner times the real kernel (no workspace to restore between runs).
  The workspace is cached per (device, stream) outside CUDA-graph capture (grown to the next power of two;
  older buffers are kept so graphs that captured them stay valid); inside capture every call allocates its own
  from the graph's pool, so two graphs never share one. Two host threads launching on one stream at once would
  share the cached one; use one stream per thread.
- ``M > 64`` (throughput): autotuned 2-D tiles in super-grouped order, fused epilogue.

Accumulation in fp32; one rounding to ``x.dtype``. Kernel limits: ``group_size`` a power of two >= 32;
``x`` float16 / bfloat16 (float32 only under the interpreter, where it checks the kernel's logic exactly);
``int4_matmul_not_supported`` says why a call cannot take the kernel, and the dispatcher then runs the reference.
``quantize_int4`` / ``dequantize_int4`` are plain PyTorch (they run once per weight, on any device).
Launchers make the tensors' GPU current; under CUDA-graph capture an untuned shape runs a default config instead of
autotuning (warm up once before capturing).
Oracle: ``xlmrxl_kernels.reference.int4.int4_matmul_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import grouped_tile
from ._utils import (
    _capturing,
    autotune_configs,
    cdiv,
    check,
    check_same_device,
    empty,
    interpreting,
    launch_autotuned,
    next_power_of_2,
    num_sms,
    on_tensor_device,
)
from .reference.int4 import (
    check_int4_args,
    dequantize_int4_ref,
    export_torchao_int4,
    import_torchao_int4,
    int4_matmul_ref,
    pack_int4,
    quantize_int4_ref,
    unpack_int4,
)

__all__ = [
    "quantize_int4",
    "dequantize_int4",
    "int4_matmul",
    "int4_matmul_not_supported",
    "pack_int4",
    "unpack_int4",
    "import_torchao_int4",
    "export_torchao_int4",
]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SMALL_M = 64  # at or below: the latency launch (narrow token tile, split-K)

quantize_int4 = quantize_int4_ref
dequantize_int4 = dequantize_int4_ref


def _cfg(bm, bn, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": group_m}, num_warps=warps, num_stages=stages)


# throughput tiles (token tile BLOCK_M x feature tile BLOCK_N); BLOCK_N is the MMA's tall side
_TILED_CONFIGS = [
    _cfg(128, 128, 8, 3),
    _cfg(64, 128, 4, 4),
    _cfg(128, 64, 4, 4),
    _cfg(64, 64, 4, 4),
    _cfg(32, 128, 4, 4),
]
_TILED_INTERPRET = _cfg(32, 32, 4, 1, group_m=2)
# latency launch: tiles are fixed by the launcher (they decide the split); only the pipeline depth is tuned
_SMALL_CONFIGS = [triton.Config({}, num_warps=4, num_stages=s) for s in (2, 3, 4, 5)]
_SMALL_BLOCK_N = 64
_SMALL_BLOCK_N_INTERPRET = 32


@triton.jit(do_not_specialize=("M", "M_BUCKET"))  # token counts: one binary for every M
def _int4_matmul_kernel(
    # pointers: activations, packed weight, group scales / zeros, bias, output, fp32 split-K workspace
    x_ptr,
    q_ptr,
    s_ptr,
    z_ptr,
    b_ptr,
    y_ptr,
    ws_ptr,
    # sizes (M_BUCKET only keys the autotune cache)
    M,
    N,
    K,
    M_BUCKET,
    # strides
    stride_xm,
    stride_xk,
    stride_qn,
    stride_qk,
    stride_sg,
    stride_sn,
    stride_ym,
    stride_yn,
    # meta-parameters
    GROUP_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    GELU: tl.constexpr,
    SPLIT_K: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KP: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    HALF: tl.constexpr = GROUP_SIZE // 2  # bytes per group; also the k-width of each nibble half
    pid_k = tl.program_id(1)
    # super-grouped order: GROUP_M token tiles share one band of BLOCK_N weight rows while it is in L2
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    m0 = pid_m.to(tl.int64) * BLOCK_M
    n0 = pid_n.to(tl.int64) * BLOCK_N
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rj = tl.arange(0, BLOCK_KP)
    m_mask = rm < M - m0
    n_mask = rn < N - n0
    q_base = q_ptr + n0 * stride_qn + rn[:, None] * stride_qn + rj[None, :] * stride_qk  # (BLOCK_N, BLOCK_KP) bytes
    x_base = x_ptr + m0 * stride_xm + rm[:, None] * stride_xm + rj[None, :] * stride_xk  # (BLOCK_M, BLOCK_KP)
    s_base = s_ptr + (n0 + rn) * stride_sn
    z_base = z_ptr + (n0 + rn) * stride_sn

    # this program's share of whole groups along K
    num_groups = K // GROUP_SIZE
    per_split = tl.cdiv(num_groups, SPLIT_K)
    g_begin = pid_k * per_split
    g_end = tl.minimum(g_begin + per_split, num_groups)

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # y^T tile
    for g in range(g_begin, g_end):
        scale = tl.load(s_base + g * stride_sg, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        zero = tl.load(z_base + g * stride_sg, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        for step in tl.static_range(HALF // BLOCK_KP):
            k_lo = g * GROUP_SIZE + step * BLOCK_KP
            p = tl.load(q_base + (g * HALF + step * BLOCK_KP) * stride_qk, mask=n_mask[:, None], other=0)
            p = p.to(tl.int32)
            # 0x4B000000 | q is the float 2**23 + q: subtracting 2**23 + 8 gives q - 8 exactly, without I2F
            w_lo = (((p & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0) * scale + zero
            w_hi = (((p >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0) * scale + zero
            xa = tl.load(x_base + k_lo * stride_xk, mask=m_mask[:, None], other=0.0)
            xb = tl.load(x_base + (k_lo + HALF) * stride_xk, mask=m_mask[:, None], other=0.0)
            if IEEE:
                acc = tl.dot(w_lo, tl.trans(xa), acc, input_precision="ieee")
                acc = tl.dot(w_hi, tl.trans(xb), acc, input_precision="ieee")
            else:
                acc = tl.dot(w_lo.to(xa.dtype), tl.trans(xa), acc)
                acc = tl.dot(w_hi.to(xb.dtype), tl.trans(xb), acc)

    out_mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + n0 + rn, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))  # exact GELU
        y_ptrs = y_ptr + m0 * stride_ym + n0 * stride_yn + rn[:, None] * stride_yn + rm[None, :] * stride_ym
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        # this split's partial sums, in its own (M, N) slice; _int4_finalize_kernel sums the splits in order
        ws_ptrs = ws_ptr + pid_k.to(tl.int64) * M * N + m0 * N + n0 + rn[:, None] + rm[None, :] * N
        tl.store(ws_ptrs, acc, mask=out_mask)


_int4_tiled = triton.autotune(
    configs=autotune_configs(_TILED_CONFIGS, _TILED_INTERPRET),
    key=["M_BUCKET", "N", "K", "GROUP_SIZE", "HAS_BIAS", "GELU"],
)(_int4_matmul_kernel)
# the workspace is only written (each split its own slice): timing runs need no restore
_int4_small = triton.autotune(
    configs=autotune_configs(_SMALL_CONFIGS),
    key=["M_BUCKET", "N", "K", "GROUP_SIZE", "SPLIT_K", "HAS_BIAS", "GELU", "BLOCK_M"],
)(_int4_matmul_kernel)


@triton.jit(do_not_specialize=("M",))
def _int4_finalize_kernel(
    ws_ptr,
    b_ptr,
    y_ptr,
    M,
    N,
    stride_ym,
    stride_yn,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    GELU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    m = offs // N
    n = offs % N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):  # a fixed order: the same bits on every run
        acc += tl.load(ws_ptr + split * M * N + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    tl.store(y_ptr + m * stride_ym + n * stride_yn, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: small, so the tests exercise split-K at tiny shapes
    return num_sms(device)


# (device, stream) -> fp32 split-K workspaces, newest (largest) last (uninitialised: every element read was written)
_WORKSPACES: dict = {}


def _workspace(device: torch.device, numel: int) -> torch.Tensor:
    """An fp32 buffer of ``numel`` elements for the split-K partial tiles. Outside CUDA-graph capture: reused across
    calls, per stream (concurrent streams never share one), grown but never freed (a graph that captured an older
    buffer keeps a valid one). Inside capture: a new buffer from the graph's private pool, so each captured graph
    owns its workspace even when several graphs are captured on one stream and replayed on different ones."""
    if _capturing(device):
        return torch.empty(numel, dtype=torch.float32, device=device)
    key = (device, torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None)
    bufs = _WORKSPACES.setdefault(key, [])
    if not bufs or bufs[-1].numel() < numel:
        bufs.append(torch.empty(next_power_of_2(numel), dtype=torch.float32, device=device))
    return bufs[-1][:numel]


def int4_matmul_not_supported(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int = 128,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> list[str]:
    """Reasons (possibly none) the kernel cannot take this call; the dispatcher then runs the reference."""
    reasons = []
    if x.dtype not in _DTYPES:
        reasons.append(f"x has dtype {x.dtype}; the kernel takes float16, bfloat16 or float32")
    elif x.dtype == torch.float32 and x.device.type == "cuda":
        # exact fp32 products run on FMA units and the dequantized tiles spill: the reference is faster
        reasons.append("float32 activations on a GPU: the int4 kernel is built for float16 / bfloat16 (cast x)")
    if not isinstance(group_size, int) or group_size < 32 or group_size & (group_size - 1):
        reasons.append(f"group_size={group_size!r}: the kernel needs a power of two >= 32")
    return reasons


def int4_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int = 128,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """``act(x @ W_hat.T + bias)`` with ``W_hat`` dequantized from the int4 weight inside the kernel's K loop.

    ``x`` ``(..., K)``; packed weight as ``quantize_int4`` returns it; ``bias`` ``(N,)`` or None; ``activation``
    None or ``"gelu"``. Returns ``(..., N)`` in ``x.dtype``. float64 ``x`` runs the reference in fp64."""
    if x.dtype == torch.float64:
        return int4_matmul_ref(x, qweight, scales, zeros, group_size, bias, activation, upcast=True)
    return _int4_matmul(x, qweight, scales, zeros, group_size, bias, activation)


# (shapes, strides, dtypes, devices, group size, activation) -> launch constants: checked once per layout
_PLANS: dict = {}
_MAX_PLANS = 4096


def _make_plan(x, qweight, scales, zeros, group_size, bias, activation) -> dict:
    N, K = check_int4_args(qweight, scales, zeros, group_size)
    check(activation in (None, "gelu"), f"activation must be None or 'gelu', got {activation!r}")
    check(
        x.dim() >= 1 and x.shape[-1] == K,
        f"x has {x.shape[-1] if x.dim() else 0} features in its last dim but the int4 weight has K={K}",
    )
    check(
        bias is None or tuple(bias.shape) == (N,),
        f"bias must have shape ({N},), got {None if bias is None else tuple(bias.shape)}",
    )
    reasons = int4_matmul_not_supported(x, qweight, scales, zeros, group_size, bias, activation)
    check(not reasons, "; ".join(reasons) + " (use the reference int4_matmul_ref)")
    check_same_device(x=x, qweight=qweight, scales=scales, zeros=zeros, bias=bias)
    x2 = x.reshape(-1, K)  # its strides are a function of x's layout
    M = x2.shape[0]
    gelu = activation == "gelu"
    common = dict(
        GROUP_SIZE=group_size,
        HAS_BIAS=bias is not None,
        GELU=gelu,
        IEEE=x.dtype == torch.float32,
        BLOCK_KP=min(group_size // 2, 64),
    )
    copy_sz = scales.stride() != zeros.stride()  # one stride pair serves both: copy them contiguous otherwise
    sz_strides = (scales.shape[1], 1) if copy_sz else scales.stride()
    plan = dict(
        lead=tuple(x.shape[:-1]),
        M=M,
        N=N,
        K=K,
        copy_sz=copy_sz,
        tail=(M, N, K, min(next_power_of_2(max(M, 1)), 8192), *x2.stride(), *qweight.stride(), *sz_strides,
              N, 1),
        split=1,
    )  # fmt: skip
    if M > SMALL_M:

        def grid(meta):
            return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]), 1)

        plan.update(small=False, grid=grid, kwargs=dict(SPLIT_K=1, **common))
        return plan
    # latency launch: tiles fixed here so the split can fill the GPU
    block_m = max(16, next_power_of_2(max(M, 1)))
    block_n = _SMALL_BLOCK_N_INTERPRET if interpreting() else _SMALL_BLOCK_N
    tiles = cdiv(M, block_m) * cdiv(N, block_n)
    num_groups = K // group_size
    # enough programs for ~4 per SM (balance: a 1.2-wave launch idles most SMs for its last 0.2), but no more
    # fp32 partial-sum traffic (split x M x N x 4 bytes, written then read) than about half the packed weight
    split = max(1, min(num_groups, (4 * _num_sms(x.device)) // tiles, K // (16 * max(M, 1))))
    split = cdiv(num_groups, cdiv(num_groups, split))  # no empty splits
    block = 1024
    plan.update(
        small=True,
        split=split,
        grid=(tiles, split),
        kwargs=dict(SPLIT_K=split, BLOCK_M=block_m, BLOCK_N=block_n, GROUP_M=1, **common),
        finalize_grid=(cdiv(M * N, block),),
        finalize_kwargs=dict(SPLIT_K=split, HAS_BIAS=bias is not None, GELU=gelu, BLOCK=block),
    )
    return plan


def _tiled_default(named):
    return _TILED_CONFIGS[1]


def _small_default(named):
    return _SMALL_CONFIGS[1]


def _meta(t) -> tuple | None:
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


@on_tensor_device
def _int4_matmul(x, qweight, scales, zeros, group_size=128, bias=None, activation=None):
    """The launcher: checks and launch constants once per argument layout (``_PLANS``), then allocate and launch."""
    key = (_meta(x), _meta(qweight), _meta(scales), _meta(zeros), _meta(bias), group_size, activation)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _make_plan(x, qweight, scales, zeros, group_size, bias, activation)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    M, N, K = plan["M"], plan["N"], plan["K"]
    y = empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y.reshape(plan["lead"] + (N,))
    x2 = x.reshape(M, K)
    b = bias if bias is not None else y  # never read without HAS_BIAS
    if plan["copy_sz"]:
        scales, zeros = scales.contiguous(), zeros.contiguous()
    if not plan["small"]:
        args = (x2, qweight, scales, zeros, b, y, y, *plan["tail"])
        launch_autotuned(_int4_tiled, plan["grid"], args, plan["kwargs"], _tiled_default)
        return y.reshape(plan["lead"] + (N,))
    split = plan["split"]
    ws = _workspace(x.device, split * M * N) if split > 1 else y
    args = (x2, qweight, scales, zeros, b, y, ws, *plan["tail"])
    launch_autotuned(_int4_small, plan["grid"], args, plan["kwargs"], _small_default)
    if split > 1:
        _int4_finalize_kernel[plan["finalize_grid"]](ws, b, y, M, N, N, 1, **plan["finalize_kwargs"])
    return y.reshape(plan["lead"] + (N,))
