"""int4 group-wise quantization (torchao's FLOAT zero-point convention, our packed layout) and int4_matmul.

Checks: round-trip error bounds, exact equality with the torchao dequantization formula, the documented nibble
layout, torchao import/export, errors naming K and the group size, and the kernel against the dequantized
reference (mean relative error <= 1e-3 in fp16) on both launch shapes (M <= 64 with split-K, M > 64 tiled).
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import INTERPRETING

from xlmrxl.backend import Backend
from xlmrxl_kernels.int4 import (
    SMALL_M,
    dequantize_int4,
    export_torchao_int4,
    import_torchao_int4,
    int4_matmul,
    int4_matmul_not_supported,
    pack_int4,
    quantize_int4,
    unpack_int4,
)
from xlmrxl_kernels.reference.int4 import int4_matmul_ref

pytestmark = pytest.mark.triton

BF16_DOT = pytest.mark.skipif(INTERPRETING, reason="tl.dot on bf16 gives wrong numbers under the Triton interpreter")


def _torchao_dequant(q, scales, zeros, group_size):
    """torchao's formula, written independently: (q - 2**(n_bit-1)) * scale + zero per group, fp32, one rounding."""
    N, K = q.shape
    s = scales.float().t().repeat_interleave(group_size, dim=1)
    z = zeros.float().t().repeat_interleave(group_size, dim=1)
    return ((q.float() - 8) * s + z).to(scales.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,K,G", [(7, 256, 128), (1, 128, 128), (5, 384, 128), (3, 64, 32), (2, 512, 256)])
def test_quantize_roundtrip(N, K, G, dtype, device):
    w = (torch.randn(N, K, device=device) * 0.05).to(dtype)
    q, s, z = quantize_int4(w, G)
    assert q.shape == (N, K // 2) and q.dtype == torch.uint8, f"qweight {tuple(q.shape)} {q.dtype}"
    assert s.shape == (K // G, N) and z.shape == (K // G, N), f"scales {tuple(s.shape)}, zeros {tuple(z.shape)}"
    assert s.dtype == dtype and z.dtype == dtype, f"scales / zeros dtype {s.dtype} / {z.dtype}"
    wq = dequantize_int4(q, s, z, G)
    assert wq.shape == (N, K) and wq.dtype == dtype
    # per element: within half a step, plus the rounding of the stored zero and of the output to the dtype
    eps = torch.finfo(dtype).eps
    step = s.float().t().repeat_interleave(G, dim=1)
    zero = z.float().t().repeat_interleave(G, dim=1)
    bound = step / 2 * (1 + 1e-3) + eps * (zero.abs() + w.float().abs())
    err = (wq.float() - w.float()).abs()
    assert (err <= bound).all(), f"max error {err.max().item():.3e}; worst excess {(err - bound).max().item():.3e}"
    # the parameters are torchao's: scale = (max - min) / 15, zero = min + 8 * scale (rounded to the dtype)
    wg = w.float().reshape(N, K // G, G)
    scale = ((wg.amax(-1) - wg.amin(-1)).clamp(min=1e-6) / 15).to(dtype)
    assert torch.equal(s, scale.t()), "scales differ from (max - min) / 15"
    assert torch.equal(z, (wg.amin(-1) + scale.float() * 8).to(dtype).t()), "zeros differ from min + 8 * scale"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dequantize_equals_torchao_formula(dtype, device):
    w = torch.randn(9, 384, device=device).to(dtype)
    q, s, z = quantize_int4(w, 128)
    codes = unpack_int4(q, 128)
    assert codes.max() <= 15 and codes.dtype == torch.uint8
    # the codes are torchao's: clamp(round((w - (zero - 8 * scale)) / scale), 0, 15)
    sf = s.float().t().repeat_interleave(128, dim=1)
    zf = z.float().t().repeat_interleave(128, dim=1)
    expected = torch.round((w.float() - (zf - 8 * sf)) / sf).clamp(0, 15)
    assert torch.equal(codes.float(), expected), "codes differ from torchao's quantize formula"
    out = dequantize_int4(q, s, z, 128)
    assert torch.equal(out, _torchao_dequant(codes, s, z, 128)), (
        "dequantize differs from (q - 8) * scale + zero, "
        f"max {(out.float() - _torchao_dequant(codes, s, z, 128).float()).abs().max():.3e}"
    )


def test_packed_layout(device):
    G = 32
    codes = torch.randint(0, 16, (3, 4 * G), device=device, dtype=torch.uint8)
    packed = pack_int4(codes, G)
    assert packed.shape == (3, 2 * G) and packed.dtype == torch.uint8
    for g in range(4):
        for j in (0, 5, G // 2 - 1):
            byte = packed[:, g * G // 2 + j]
            assert torch.equal(byte & 0xF, codes[:, g * G + j]), f"low nibble of group {g} byte {j}"
            assert torch.equal(byte >> 4, codes[:, g * G + G // 2 + j]), f"high nibble of group {g} byte {j}"
    assert torch.equal(unpack_int4(packed, G), codes)


def test_torchao_interop(device):
    w = torch.randn(6, 256, device=device, dtype=torch.bfloat16)
    q, s, z = quantize_int4(w, 128)
    int_data, sz = export_torchao_int4(q, s, z, 128)
    assert int_data.shape == (6, 128) and sz.shape == (2, 6, 2), f"{tuple(int_data.shape)} {tuple(sz.shape)}"
    codes = unpack_int4(q, 128)
    # torchao (torch >= 2.5) packs even k in the high nibble, odd k in the low one
    assert torch.equal(int_data >> 4, codes[:, 0::2]) and torch.equal(int_data & 0xF, codes[:, 1::2])
    assert torch.equal(sz[..., 0], s) and torch.equal(sz[..., 1], z)
    for data in (int_data, codes.to(torch.int32)):
        q2, s2, z2 = import_torchao_int4(data, sz, 128)
        assert torch.equal(q2, q) and torch.equal(s2, s) and torch.equal(z2, z)


@pytest.mark.skipif(
    not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="this torch has no CPU tinygemm op"
)
def test_matches_torch_tinygemm_cpu():
    """PyTorch's own tinygemm kernel (what torchao's int4 weight-only runs), fed our weights through
    export_torchao_int4, computes with exactly our dequantized weights (identity input: each output is one product)."""
    N, K, G = 48, 384, 128
    q, s, z = quantize_int4(torch.randn(N, K, dtype=torch.bfloat16), G)
    _, sz = export_torchao_int4(q, s, z, G)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(q, G).to(torch.int32), 2)
    eye = torch.eye(K, dtype=torch.bfloat16)
    w_tinygemm = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, G, sz).t()
    w_ours = dequantize_int4(q, s, z, G)
    assert torch.equal(w_tinygemm, w_ours), f"max diff {(w_tinygemm.float() - w_ours.float()).abs().max():.3e}"
    x = torch.randn(5, K, dtype=torch.bfloat16)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, G, sz)
    ref = int4_matmul_ref(x, q, s, z, G, upcast=True)
    assert _mean_rel(y, ref) <= 4e-3, f"tinygemm vs our reference: mean rel {_mean_rel(y, ref):.2e}"


def test_group_errors(device):
    w = torch.randn(4, 200, device=device)
    with pytest.raises(ValueError, match=r"K=200.*group_size=128"):
        quantize_int4(w, 128)
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(torch.randn(4, 128, device=device), 7)
    q, s, z = quantize_int4(torch.randn(4, 256, device=device), 128)
    with pytest.raises(ValueError, match="K=256"):
        int4_matmul(torch.randn(2, 200, device=device), q, s, z, 128)
    with pytest.raises(ValueError, match=r"K=256 is not a multiple of group_size=96"):
        int4_matmul(torch.randn(2, 256, device=device), q, s, z, 96)
    with pytest.raises(ValueError, match="scales must have shape"):
        int4_matmul(torch.randn(2, 256, device=device), q, s.t().contiguous(), z, 128)
    with pytest.raises(ValueError, match="activation"):
        int4_matmul(torch.randn(2, 256, device=device), q, s, z, 128, activation="relu")
    x_ok = torch.randn(2, 256, device=device, dtype=_kernel_dtype(device))
    assert int4_matmul_not_supported(x_ok, q, s, z, 128) == []
    assert int4_matmul_not_supported(x_ok, q, s, z, 16), "group 16 < 32 must be reported"


def _kernel_dtype(device):
    """fp32 runs the kernel only under the interpreter (on a GPU fp32 int4 takes the reference)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _mean_rel(out, ref):
    return ((out.float() - ref.float()).abs().mean() / ref.float().abs().mean().clamp(min=1e-12)).item()


# M: both launch shapes (<= SMALL_M: narrow tile + split-K; above: tiled); K crosses group boundaries; N odd-ish
CASES = [(M, N, K, v) for M in (1, 3, 17, 64, 100) for (N, K) in ((37, 256), (45, 384)) for v in ("plain", "gelu")]
CASES += [(3, 37, 384, "bias"), (100, 45, 256, "bias")]


@pytest.mark.parametrize("M,N,K,variant", CASES)
def test_int4_matmul_fp16(M, N, K, variant, device):
    w = torch.randn(N, K, device=device, dtype=torch.float16) * 0.05
    q, s, z = quantize_int4(w, 128)
    x = torch.randn(M, K, device=device, dtype=torch.float16)
    bias = torch.randn(N, device=device, dtype=torch.float16) if variant != "plain" else None  # gelu: with bias
    act = "gelu" if variant == "gelu" else None
    out = int4_matmul(x, q, s, z, 128, bias, act)
    assert out.shape == (M, N) and out.dtype == torch.float16, f"got {tuple(out.shape)} {out.dtype}"
    assert torch.isfinite(out).all(), "non-finite outputs (an element was not written?)"
    ref = int4_matmul_ref(x, q, s, z, 128, bias, act, upcast=True)
    rel = _mean_rel(out, ref)
    assert rel <= 1e-3, f"M={M} N={N} K={K} {variant} ({'split-K' if M <= SMALL_M else 'tiled'}): mean rel {rel:.2e}"


def test_split_k_workspace_is_reused_and_needs_no_restore(device, monkeypatch):
    """Split-K stores each split's partial tile into its own slice of a cached fp32 workspace (no atomics): calls of
    different shapes in a row stay exact even when the workspace starts as garbage (NaN), the autotuner has no
    workspace to restore, and no new buffer is allocated for a size already served. Inside CUDA-graph capture
    every call gets its own buffer (graphs captured on one stream never share one)."""
    import importlib

    int4_mod = importlib.import_module("xlmrxl_kernels.int4")
    assert not getattr(int4_mod._int4_small, "restore_value", None), "the autotuner must not copy the workspace"
    dtype = _kernel_dtype(device)
    int4_mod._WORKSPACES.clear()
    int4_mod._workspace(device, 1024).fill_(float("nan"))  # garbage left by anything
    for M, N, K in ((2, 40, 512), (3, 24, 512), (2, 40, 512), (1, 8, 256)):
        w = torch.randn(N, K, device=device, dtype=dtype) * 0.05
        q, s, z = quantize_int4(w, 128)
        x = torch.randn(M, K, device=device, dtype=dtype)
        out = int4_matmul(x, q, s, z, 128)
        again = int4_matmul(x, q, s, z, 128)
        assert torch.equal(out, again), "split-K sums in a fixed order: the same bits on every run"
        ref = int4_matmul_ref(x, q, s, z, 128, upcast=True)
        assert out.shape == (M, N) and out.dtype == dtype, f"got {tuple(out.shape)} {out.dtype}"
        rel = _mean_rel(out, ref)
        assert rel <= 1e-3, f"M={M} N={N} K={K} after earlier split-K calls: mean rel {rel:.2e}"
    bufs = [b for v in int4_mod._WORKSPACES.values() for b in v]
    assert len(bufs) == 1, f"one buffer serves every call here, got sizes {[b.numel() for b in bufs]}"
    if device.type == "cuda":
        return
    # capture (faked on CPU): a fresh buffer per call, never the cached one
    monkeypatch.setattr(int4_mod, "_capturing", lambda device: True)
    a = int4_mod._workspace(device, 64)
    b = int4_mod._workspace(device, 64)
    assert len({a.data_ptr(), b.data_ptr(), bufs[0].data_ptr()}) == 3


@pytest.mark.skipif(not INTERPRETING, reason="fp32 int4 runs the reference on a GPU (see int4_matmul_not_supported)")
@pytest.mark.parametrize("M,G", [(2, 32), (70, 64), (2, 256), (70, 256)])
def test_int4_matmul_fp32_group_sizes(M, G, device):
    N, K = 24, 512
    q, s, z = quantize_int4(torch.randn(N, K, device=device), G)
    x = torch.randn(3, M, K, device=device)  # leading dims
    bias = torch.randn(N, device=device)
    out = int4_matmul(x, q, s, z, G, bias, "gelu")
    ref = int4_matmul_ref(x, q, s, z, G, bias, "gelu")
    assert out.shape == (3, M, N) and out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"G={G} M={M}: max error {err:.3e}"


@BF16_DOT
@pytest.mark.parametrize("M", [1, 16, 200])
def test_int4_matmul_bf16(M, device):
    N, K = 96, 384
    q, s, z = quantize_int4(torch.randn(N, K, device=device, dtype=torch.bfloat16), 128)
    x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
    out = int4_matmul(x, q, s, z, 128)
    ref = int4_matmul_ref(x, q, s, z, 128, upcast=True)
    assert out.dtype == torch.bfloat16
    assert _mean_rel(out, ref) <= 4e-3, f"bf16 M={M}: mean rel {_mean_rel(out, ref):.2e}"


@pytest.mark.parametrize("M", [2, 80])
def test_int4_matmul_strided_views(M, device):
    """Column slices of concatenated scales / zeros (what fused q/k/v with shared storage hands the kernel)."""
    dt = _kernel_dtype(device)
    q, s, z = quantize_int4(torch.randn(96, 256, device=device, dtype=dt), 128)
    rows = slice(32, 72)
    qv, sv, zv = q[rows], s[:, rows], z[:, rows]
    assert not sv.is_contiguous()
    x = torch.randn(M, 256, device=device, dtype=dt)
    out = int4_matmul(x, qv, sv, zv, 128)
    ref = int4_matmul_ref(x, qv.contiguous(), sv.contiguous(), zv.contiguous(), 128, upcast=True)
    assert out.shape == (M, 40) and out.dtype == dt
    assert _mean_rel(out, ref) <= 1e-3, f"strided scales / zeros: mean rel {_mean_rel(out, ref):.2e}"


def test_reference_matches_linear_on_dequantized(device):
    q, s, z = quantize_int4(torch.randn(20, 256, device=device), 128)
    x = torch.randn(2, 5, 256, device=device)
    b = torch.randn(20, device=device)
    out = int4_matmul_ref(x, q, s, z, 128, b, "gelu")
    ref = F.gelu(F.linear(x, dequantize_int4(q, s, z, 128), b))
    assert out.shape == (2, 5, 20)
    assert torch.allclose(out, ref, atol=1e-6), f"max error {(out - ref).abs().max():.3e}"


def test_backend_dispatch(device):
    q, s, z = quantize_int4(torch.randn(40, 256, device=device, dtype=torch.float16), 128)
    x = torch.randn(5, 256, device=device, dtype=torch.float16)
    ref = int4_matmul_ref(x, q, s, z, 128, None, "gelu", upcast=True)
    for name in ("reference", "triton"):
        out = Backend(name).int4_matmul(x, q, s, z, 128, None, "gelu")
        assert out.shape == (5, 40) and out.dtype == torch.float16
        assert _mean_rel(out, ref) <= 1e-3, f"Backend({name!r}): mean rel {_mean_rel(out, ref):.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K,N", [(2560, 7680), (2560, 10240), (10240, 2560)])
@pytest.mark.parametrize("M", [1, 4, 16, 64, 256, 2048])
def test_realistic_shapes_gpu(M, K, N, dtype):
    q, s, z = quantize_int4(torch.randn(N, K, device="cuda", dtype=dtype) * 0.02, 128)
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    b = torch.randn(N, device="cuda", dtype=dtype)
    for act in (None, "gelu"):
        out = int4_matmul(x, q, s, z, 128, b, act)
        ref = int4_matmul_ref(x, q, s, z, 128, b, act, upcast=True)
        tol = 1e-3 if dtype == torch.float16 else 4e-3
        assert _mean_rel(out, ref) <= tol, f"M={M} K={K} N={N} {dtype} {act}: mean rel {_mean_rel(out, ref):.2e}"
