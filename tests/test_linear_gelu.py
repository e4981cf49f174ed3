"""linear_gelu / linear_residual (GEMM + fused epilogue) against their PyTorch references.

Tolerances: fp32 is compared tightly with the fp32 reference; fp16 / bf16 follow the rule "kernel error vs fp32
truth <= 2x PyTorch's own error in the same dtype" (plus a tiny atol). bf16 `tl.dot` is wrong under the Triton
interpreter, so bf16 cases run on a GPU only.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import HAS_CUDA, INTERPRETING

from xlmrxl.backend import Backend
from xlmrxl_kernels.gemm import (
    linear_gelu,
    linear_gelu_not_supported,
    linear_residual,
    linear_residual_not_supported,
)
from xlmrxl_kernels.reference.linear_gelu import linear_gelu_ref, linear_residual_ref

pytestmark = pytest.mark.triton

# (M, N, K): ones, primes, the XL head dim 80, sizes that cross the interpreter's 32-wide blocks
SHAPES = [(1, 1, 1), (1, 7, 80), (13, 37, 80), (64, 96, 128), (31, 61, 67), (3, 80, 130), (40, 33, 5)]
DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(
            INTERPRETING, reason="tl.dot on bf16 gives wrong numbers under the Triton interpreter"
        ),
    ),
]


def _inputs(M, N, K, dtype, device, bias=True, lead=None):
    shape = (M, K) if lead is None else (*lead, K)
    x = torch.randn(shape, device=device, dtype=dtype)
    w = torch.randn(N, K, device=device, dtype=dtype) / K**0.5
    b = torch.randn(N, device=device, dtype=dtype) if bias else None
    return x, w, b


def _check_close(out, ref_lowp, truth, dtype, what):
    """fp32: tight. Low precision: our error vs fp32 truth <= 2x PyTorch's error in the same dtype + tiny atol."""
    assert out.shape == truth.shape, f"{what}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    assert torch.isfinite(out).all(), f"{what}: non-finite outputs (an element was not written?)"
    err = (out.float() - truth).abs().max().item()
    if dtype == torch.float32:
        tol = 1e-5 * max(1.0, truth.abs().max().item())
        assert err <= tol, f"{what}: max error {err:.3e} vs fp32 reference > {tol:.1e}"
    else:
        torch_err = (ref_lowp.float() - truth).abs().max().item()
        tol = 2 * torch_err + 1e-4 * max(1.0, truth.abs().max().item()) * (8 if dtype == torch.bfloat16 else 1)
        assert err <= tol, f"{what}: max error {err:.3e} vs fp32 truth > 2x PyTorch's {torch_err:.3e} (+atol)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_linear_gelu(M, N, K, dtype, device):
    x, w, b = _inputs(M, N, K, dtype, device)
    out = linear_gelu(x, w, b)
    truth = linear_gelu_ref(x.float(), w.float(), b.float())
    _check_close(out, linear_gelu_ref(x, w, b), truth, dtype, f"linear_gelu M={M} N={N} K={K} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_linear_residual(M, N, K, dtype, device):
    x, w, b = _inputs(M, N, K, dtype, device)
    r = torch.randn(M, N, device=device, dtype=dtype)
    out = linear_residual(x, w, b, r)
    truth = linear_residual_ref(x.float(), w.float(), b.float(), r.float())
    _check_close(out, linear_residual_ref(x, w, b, r), truth, dtype, f"linear_residual M={M} N={N} K={K} {dtype}")


@pytest.mark.parametrize("op", ["gelu", "residual"])
def test_no_bias_leading_dims_and_strides(op, device):
    # (2, 9, K) input, bias None, weight and x as transposed views (non-unit inner strides)
    x = torch.randn(2, 70, 9, device=device).transpose(1, 2)  # (2, 9, 70), stride(-1) = 9
    w = torch.randn(70, 45, device=device).t()  # (45, 70), stride(-1) = 45
    if op == "gelu":
        out, ref = linear_gelu(x, w, None), linear_gelu_ref(x, w, None)
    else:
        r = torch.randn(2, 9, 45, device=device)
        out, ref = linear_residual(x, w, None, r), linear_residual_ref(x, w, None, r)
    assert out.shape == (2, 9, 45) and out.dtype == torch.float32, f"got {tuple(out.shape)} {out.dtype}"
    err = (out - ref).abs().max().item()
    assert err <= 1e-4, f"{op}: max error {err:.3e}"


def test_gelu_is_exact_erf(device):
    # large pre-activations around -3..3 separate exact GELU from the tanh approximation (diff ~1e-4..1e-3)
    x = torch.linspace(-3, 3, 64, device=device).reshape(64, 1)
    w = torch.ones(1, 1, device=device)
    out = linear_gelu(x, w, None)
    exact = F.gelu(x)
    tanh = F.gelu(x, approximate="tanh")
    err = (out - exact).abs().max().item()
    assert err <= 1e-6, f"max error vs exact erf GELU {err:.3e}"
    assert (tanh - exact).abs().max().item() > 1e-4 > err


def test_errors_and_not_supported(device):
    x = torch.randn(4, 16, device=device)
    w = torch.randn(8, 12, device=device)
    with pytest.raises(ValueError, match="K"):
        linear_gelu(x, w, None)
    w = torch.randn(8, 16, device=device)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        linear_gelu(x, w, torch.randn(9, device=device))
    with pytest.raises(ValueError, match="residual must have shape"):
        linear_residual(x, w, None, torch.randn(4, 9, device=device))
    # hard limits only: float32 is a kernel dtype everywhere (whether cuBLAS is faster on a GPU is measured)
    assert linear_gelu_not_supported(x, w, None) == []
    assert linear_residual_not_supported(x, w, None, torch.randn(4, 8, device=device)) == []
    reasons = linear_gelu_not_supported(x.double(), w.double(), None)
    assert reasons and "float64" in reasons[0], reasons
    assert linear_gelu_not_supported(x, w.half(), None), "a dtype mismatch must be reported"


class _ReportsCuda(torch.Tensor):
    """A CPU tensor that says it lives on cuda:0 (for the dispatch decision only; never launched)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_float32_on_cuda_is_not_a_hard_limit():
    """Whether cuBLAS beats the exact-fp32 kernel is measured (the op table), never a not_supported reason."""
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    xc, wc = (torch.Tensor._make_subclass(_ReportsCuda, t) for t in (x, w))
    assert linear_gelu_not_supported(xc, wc, None) == []
    assert linear_residual_not_supported(xc, wc, None, torch.randn(4, 8)) == []
    for dtype in (torch.float16, torch.bfloat16):
        xh, wh = (torch.Tensor._make_subclass(_ReportsCuda, t.to(dtype)) for t in (x, w))
        assert linear_gelu_not_supported(xh, wh, None) == [], f"{dtype} on CUDA must take the kernel"
    assert linear_gelu_not_supported(x, w, None) == [], "float32 on CPU (the interpreter) must take the kernel"


def test_empty_rows(device):
    x = torch.randn(0, 16, device=device)
    w = torch.randn(8, 16, device=device)
    out = linear_gelu(x, w, None)
    assert out.shape == (0, 8)


def test_backend_dispatch(device):
    x, w, b = _inputs(5, 24, 40, torch.float32, device)
    r = torch.randn(5, 24, device=device)
    ref = linear_gelu_ref(x, w, b)
    for name in ("reference", "triton"):
        be = Backend(name)
        out = be.linear_gelu(x, w, b)
        err = (out - ref).abs().max().item()
        assert err <= 1e-5, f"Backend({name!r}).linear_gelu max error {err:.3e}"
        out = be.linear_residual(x, w, b, r)
        err = (out - linear_residual_ref(x, w, b, r)).abs().max().item()
        assert err <= 1e-5, f"Backend({name!r}).linear_residual max error {err:.3e}"
    # float64 is not a kernel dtype: the guarded kernel falls back to the reference
    out = Backend("triton").linear_gelu(x.double(), w.double(), b.double())
    assert out.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,N,K", [(4096, 10240, 2560), (1000, 2560, 10240), (128, 2560, 2560), (7, 7680, 2560)])
def test_realistic_shapes_gpu(M, N, K, dtype):
    x, w, b = _inputs(M, N, K, dtype, "cuda")
    r = torch.randn(M, N, device="cuda", dtype=dtype)
    truth = linear_gelu_ref(x.float(), w.float(), b.float())
    _check_close(linear_gelu(x, w, b), linear_gelu_ref(x, w, b), truth, dtype, f"linear_gelu {M}x{N}x{K}")
    truth = linear_residual_ref(x.float(), w.float(), b.float(), r.float())
    _check_close(
        linear_residual(x, w, b, r), linear_residual_ref(x, w, b, r), truth, dtype, f"linear_residual {M}x{N}x{K}"
    )


@pytest.mark.skipif(HAS_CUDA, reason="CPU-only check of the interpreter set-up")
def test_runs_under_interpreter():
    assert INTERPRETING, "tests/conftest.py must set TRITON_INTERPRET=1 without CUDA"


# ---- split-K (few tokens): forced and automatic ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", [2, 3, 5])
@pytest.mark.parametrize("M,N,K", [(1, 40, 512), (7, 33, 640), (33, 70, 300)])
@pytest.mark.parametrize("epi", ["gelu", "residual", "none"])
def test_split_k(M, N, K, split, epi, dtype, device):
    """The split-K path (partial tiles per split, then the finalize kernel's epilogue) gives the fused result;
    K not a multiple of the chunk (300, 640 / 3) covers the short last chunk and the masked K loads."""
    import importlib

    G = importlib.import_module("xlmrxl_kernels.gemm")
    x, w, b = _inputs(M, N, K, dtype, device, bias=epi != "none")
    r = torch.randn(M, N, device=device, dtype=dtype)
    if epi == "gelu":
        out, truth, low = (
            G._launch(x, w, b, None, G._EPI_GELU, split),
            linear_gelu_ref(x.float(), w.float(), b.float()),
            linear_gelu_ref(x, w, b),
        )
    elif epi == "residual":
        out = G._launch(x, w, b, r, G._EPI_RESIDUAL, split)
        truth, low = linear_residual_ref(x.float(), w.float(), b.float(), r.float()), linear_residual_ref(x, w, b, r)
    else:
        out, truth, low = G._launch(x, w, None, None, G._EPI_NONE, split), x.float() @ w.float().T, x @ w.T
    _check_close(out, low, truth, dtype, f"split-K {split} {epi} M={M} N={N} K={K} {dtype}")
    again = G._launch(
        x,
        w,
        b if epi != "none" else None,
        r if epi == "residual" else None,
        {"gelu": G._EPI_GELU, "residual": G._EPI_RESIDUAL, "none": G._EPI_NONE}[epi],
        split,
    )
    assert torch.equal(out, again), "split-K sums the splits in a fixed order: the same bits every run"


def test_split_k_heuristic(monkeypatch):
    import importlib

    G = importlib.import_module("xlmrxl_kernels.gemm")
    monkeypatch.setattr(G, "num_sms", lambda device: 132)
    cuda = torch.device("cuda", 0)
    assert G._split_k(cuda, 128, 2560, 2560, 64, 128) == 2  # 40 tiles: split, capped by partial-sum traffic
    assert G._split_k(cuda, 1, 2560, 2560, 64, 128) == 10  # 20 tiles -> 2 x 132 / 20 = 14, capped by K // 256
    assert G._split_k(cuda, 16, 10240, 2560, 64, 128) == 4  # 80 tiles
    assert G._split_k(cuda, 256, 2560, 2560, 64, 128) == 1  # many tokens: the tiled kernel
    assert G._split_k(cuda, 64, 2560 * 8, 2560, 64, 128) == 1  # 160 tiles fill 132 SMs already
    assert G._split_k(cuda, 4, 2560, 256, 64, 128) == 1  # short K


@pytest.mark.triton
def test_small_m_takes_split_k_automatically(device):
    """At few tokens the public functions split K by themselves (the interpreter reports 4 SMs)."""
    import importlib

    G = importlib.import_module("xlmrxl_kernels.gemm")
    G._WORKSPACES.clear()
    x, w, b = _inputs(2, 40, 1024, torch.float32, device)
    out = linear_gelu(x, w, b)
    if device.type == "cpu":
        assert G._WORKSPACES, "M=2, K=1024 must take the split-K path"
    _check_close(out, linear_gelu_ref(x, w, b), linear_gelu_ref(x, w, b), torch.float32, "auto split-K")
