"""PyTorch oracles of ``xlmrxl_kernels.int4``: int4 group-wise weight quantization and the int4-weight matmul.

Maths (torchao's int4 weight-only / tinygemm convention: asymmetric uint4, ``zero_point_domain=FLOAT``,
``preserve_zero=False``), per row ``n`` and group of ``G = group_size`` consecutive ``k``:

    scale = max(max(w) - min(w), 1e-6) / 15          zero = min(w) + 8 * scale      (both rounded to the dtype)
    q     = clamp(round((w - (zero - 8 * scale)) / scale), 0, 15)
    w_hat = (q - 8) * scale + zero                    (fp32 arithmetic, one rounding to the dtype)

so a torchao checkpoint's ``(q, scales, zeros)`` means the same weights here (``import_torchao_int4``).

Packed layout (chosen for the kernel's loads; see ``xlmrxl_kernels.int4``):

- ``qweight``: uint8 ``(N, K // 2)``. Group ``g`` (``k`` in ``[g*G, (g+1)*G)``) owns bytes
  ``qweight[n, g*G/2 : (g+1)*G/2]``; byte ``j`` of it holds ``q[n, g*G + j]`` in its **low** nibble and
  ``q[n, g*G + G/2 + j]`` in its **high** nibble. One contiguous load of a group's bytes unpacks (mask, shift) into
  the two contiguous K-halves of the group, each multiplied by a contiguous slice of ``x``: no register shuffle.
- ``scales``, ``zeros``: ``(K // G, N)``, contiguous, in the weight's dtype (fp16 / bf16 / fp32): a kernel's
  per-group load over a tile of ``N`` is contiguous (tinygemm stores them ``(K/G, N, 2)`` for the same reason).

Limits: ``G`` even and ``K % G == 0`` (else ValueError naming both). ``int4_matmul_ref`` dequantizes then calls
``F.linear``, so an int4 model runs anywhere (CPU included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_group(K: int, group_size: int) -> None:
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be an even integer >= 2, got {group_size!r} (128 is the usual choice)")
    if K % group_size:
        raise ValueError(
            f"in_features K={K} is not a multiple of group_size={group_size}; int4 quantization needs "
            f"whole groups along K (pad K to {((K + group_size - 1) // group_size) * group_size} or "
            "choose a group size that divides K)"
        )


def check_int4_args(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> tuple[int, int]:
    """Validate a packed int4 weight; return ``(N, K)``."""
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"qweight must be a 2-D uint8 tensor (N, K // 2), got {qweight.dtype} {tuple(qweight.shape)}")
    N, K = qweight.shape[0], 2 * qweight.shape[1]
    _check_group(K, group_size)
    expected = (K // group_size, N)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{name} must have shape (K // group_size, N) = {expected} for qweight "
                f"{tuple(qweight.shape)} and group_size={group_size}, got {tuple(t.shape)}"
            )
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} has dtype {t.dtype}; expected float16, bfloat16, float32 or float64")
    if scales.dtype != zeros.dtype:
        raise TypeError(f"scales ({scales.dtype}) and zeros ({zeros.dtype}) must share one dtype")
    return N, K


def pack_int4(q: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """Pack integer codes ``q`` (N, K) in [0, 15] into the ``qweight`` layout above (uint8 ``(N, K // 2)``)."""
    if q.dim() != 2:
        raise ValueError(f"q must be 2-D (N, K), got shape {tuple(q.shape)}")
    N, K = q.shape
    _check_group(K, group_size)
    qg = q.to(torch.uint8).reshape(N, K // group_size, 2, group_size // 2)
    return (qg[:, :, 0, :] | (qg[:, :, 1, :] << 4)).reshape(N, K // 2)


def unpack_int4(qweight: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """Inverse of ``pack_int4``: uint8 codes ``(N, K)`` in [0, 15]."""
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"qweight must be a 2-D uint8 tensor (N, K // 2), got {qweight.dtype} {tuple(qweight.shape)}")
    N, K = qweight.shape[0], 2 * qweight.shape[1]
    _check_group(K, group_size)
    p = qweight.reshape(N, K // group_size, 1, group_size // 2)
    return torch.cat([p & 0xF, p >> 4], dim=2).reshape(N, K)


def quantize_int4_ref(weight: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` (N, K) to ``(qweight, scales, zeros)`` in the layout above; scales/zeros keep its dtype."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (N, K) as nn.Linear stores it, got shape {tuple(weight.shape)}")
    if weight.dtype not in _FLOATS:
        raise TypeError(f"weight has dtype {weight.dtype}; expected float16, bfloat16, float32 or float64")
    N, K = weight.shape
    _check_group(K, group_size)
    rows = max(1, (1 << 24) // K)  # fp32 temporaries of at most 64 MB (an LM head is 250880 x 2560)
    parts = [_quantize_rows(weight[i : i + rows].detach(), group_size) for i in range(0, N, rows)]
    qweight = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    scales = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    zeros = torch.cat([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
    return qweight, scales.t().contiguous(), zeros.t().contiguous()


def _quantize_rows(weight: torch.Tensor, group_size: int):
    n, K = weight.shape
    ct = torch.promote_types(weight.dtype, torch.float32)  # fp64 weights quantize in fp64
    w = weight.to(ct).reshape(n, K // group_size, group_size)
    wmin, wmax = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((wmax - wmin).clamp(min=1e-6) / 15).to(weight.dtype)
    zeros = (wmin + scales.to(ct) * 8).to(weight.dtype)
    # quantize against the rounded (stored) parameters, so dequantization is as close as those allow
    s, z = scales.to(ct).unsqueeze(-1), zeros.to(ct).unsqueeze(-1)
    q = torch.round((w - (z - 8 * s)) / s).clamp_(0, 15).to(torch.uint8).reshape(n, K)
    return pack_int4(q, group_size), scales, zeros


def dequantize_int4_ref(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int = 128
) -> torch.Tensor:
    """``(q - 8) * scale + zero`` per group, computed in fp32 (fp64 for fp64 scales) and rounded once to
    ``scales.dtype``: (N, K)."""
    N, K = check_int4_args(qweight, scales, zeros, group_size)
    ct = torch.promote_types(scales.dtype, torch.float32)
    q = unpack_int4(qweight, group_size).to(ct).reshape(N, K // group_size, group_size)
    s = scales.to(ct).t().unsqueeze(-1)
    z = zeros.to(ct).t().unsqueeze(-1)
    return ((q - 8) * s + z).reshape(N, K).to(scales.dtype)


def int4_matmul_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int = 128,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    upcast: bool = False,
) -> torch.Tensor:
    """``act(x @ dequantize(qweight).T + bias)`` in ``x.dtype``; ``activation`` is None or ``"gelu"`` (exact erf).

    ``upcast=True`` computes in ``promote_types(x.dtype, float32)`` and rounds once (what the kernel does)."""
    N, K = check_int4_args(qweight, scales, zeros, group_size)
    if activation not in (None, "gelu"):
        raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim but the int4 weight has K={K}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
    compute = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype
    w = dequantize_int4_ref(qweight, scales, zeros, group_size).to(compute)
    y = F.linear(x.to(compute), w, None if bias is None else bias.to(compute))
    if activation == "gelu":
        y = F.gelu(y)
    return y.to(x.dtype)


# -- torchao interop -----------------------------------------------------------------------------------------------
def import_torchao_int4(
    int_data: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Convert torchao int4 weight-only tensors (before tinygemm's opaque ``_convert_weight_to_int4pack``) to ours.

    ``int_data``: the codes, either int32 / uint8 ``(N, K)`` in [0, 15] or torchao's uint8 ``(N, K // 2)`` with
    even ``k`` in the high nibble; ``scales_and_zeros``: ``(K // G, N, 2)`` (``[..., 0]`` scale, ``[..., 1]`` zero).
    Same maths, so the dequantized weights are identical."""
    if scales_and_zeros.dim() != 3 or scales_and_zeros.shape[2] != 2:
        raise ValueError(f"scales_and_zeros must be (K // group_size, N, 2), got {tuple(scales_and_zeros.shape)}")
    groups, N = scales_and_zeros.shape[:2]
    K = groups * group_size
    if tuple(int_data.shape) == (N, K):
        q = int_data
    elif tuple(int_data.shape) == (N, K // 2) and int_data.dtype == torch.uint8:
        q = torch.stack([int_data >> 4, int_data & 0xF], dim=-1).reshape(N, K)
    else:
        raise ValueError(
            f"int_data must be (N, K) = {(N, K)} codes or uint8 (N, K // 2) = {(N, K // 2)}, got "
            f"{int_data.dtype} {tuple(int_data.shape)}"
        )
    scales = scales_and_zeros[..., 0].contiguous()
    zeros = scales_and_zeros[..., 1].contiguous()
    return pack_int4(q, group_size), scales, zeros


def export_torchao_int4(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours -> torchao: ``(int_data, scales_and_zeros)`` with ``int_data`` uint8 ``(N, K // 2)``, even ``k`` in the
    high nibble (what ``torch.ops.aten._convert_weight_to_int4pack`` takes since torch 2.5) and
    ``scales_and_zeros`` ``(K // G, N, 2)`` in ``scales.dtype`` (tinygemm wants bfloat16: cast it)."""
    N, K = check_int4_args(qweight, scales, zeros, group_size)
    q = unpack_int4(qweight, group_size).reshape(N, K // 2, 2)
    int_data = (q[..., 0] << 4) | q[..., 1]
    return int_data.contiguous(), torch.stack([scales, zeros], dim=-1).contiguous()
