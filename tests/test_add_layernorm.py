"""add_layernorm (Triton) vs add_layernorm_ref: row widths 1 / primes / 80 / 2560, with and without residual, fp32
tight, fp16 / bf16 by the 2x rule (our error vs fp32 truth <= 2x PyTorch's own error in that dtype + one ulp), strided
inputs, the wide-row two-pass path, errors, and the dispatcher. Realistic XL shapes carry the ``gpu`` marker."""

import pytest
import torch

from xlmrxl_kernels.reference import add_layernorm_ref

ak = pytest.importorskip("xlmrxl_kernels.norm")

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _inputs(shape, dtype, device, residual=True, offset=0.0):
    n = shape[-1]
    x = (torch.randn(shape, device=device) * 2 + offset).to(dtype)
    r = torch.randn(shape, device=device).to(dtype) if residual else None
    w = (torch.randn(n, device=device) * 0.5 + 1).to(dtype)
    b = (torch.randn(n, device=device) * 0.1).to(dtype)
    return x, r, w, b


def _truth(x, r, w, b, eps=1e-5):
    """fp64 LayerNorm of the h PyTorch itself would form (x + r rounded to the input dtype)."""
    h = x if r is None else x + r
    y = torch.nn.functional.layer_norm(
        h.double(), (x.shape[-1],), None if w is None else w.double(), None if b is None else b.double(), eps
    )
    return y, h


def _assert_close(y, h, x, r, w, b, eps=1e-5):
    assert y.shape == x.shape and h.shape == x.shape, f"shapes y {tuple(y.shape)} h {tuple(h.shape)} vs {x.shape}"
    assert y.dtype == x.dtype and h.dtype == x.dtype, f"dtypes y {y.dtype} h {h.dtype} vs {x.dtype}"
    truth, h_torch = _truth(x, r, w, b, eps)
    if r is None:
        assert h is x, "with residual=None, h must be x itself (no copy)"
    else:
        dh = (h.double() - h_torch.double()).abs().max().item()
        # fp32/fp16: bit-exact. bf16: exact on a GPU; the CPU interpreter truncates fp32->bf16 (<= 1 ulp off)
        h_tol = 0.0 if (x.dtype != torch.bfloat16 or x.is_cuda) else ULP[x.dtype] * h_torch.abs().max().item()
        assert dh <= h_tol, f"h = x + residual differs from PyTorch's add by {dh:.3g} (allowed {h_tol:.3g})"
    err = (y.double() - truth).abs().max().item()
    scale = truth.abs().max().item()
    if x.dtype == torch.float32:
        tol = 2e-5 * max(1.0, scale)
        assert err <= tol, f"fp32 max error {err:.3g} > {tol:.3g}"
    else:
        y_torch, _ = add_layernorm_ref(x, r, w, b, eps, upcast=False)
        torch_err = (y_torch.double() - truth).abs().max().item()
        tol = 2 * torch_err + ULP[x.dtype] * scale
        assert err <= tol, f"{x.dtype} max error {err:.3g} > 2 x PyTorch's {torch_err:.3g} + 1 ulp"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("n", [1, 7, 13, 80, 257, 2560])
def test_matches_reference(n, residual, dtype, device):
    x, r, w, b = _inputs((3, 5, n), dtype, device, residual)
    y, h = ak.add_layernorm(x, r, w, b)
    _assert_close(y, h, x, r, w, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_upcast_reference_agrees(dtype, device):
    """The kernel's oracle is the upcast reference: equal up to one output rounding."""
    x, r, w, b = _inputs((4, 96), dtype, device)
    y, h = ak.add_layernorm(x, r, w, b)
    y_ref, h_ref = add_layernorm_ref(x, r, w, b)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    err = (y.double() - y_ref.double()).abs().max().item()
    tol = 4e-6 if dtype == torch.float32 else 2 * ULP[dtype] * y_ref.abs().max().item()
    assert err <= tol, f"max |kernel - ref| = {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("n", [1, 80, 257, 2560])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_row_loop_path(n, residual, dtype, device):
    """Force the two-pass (Welford) kernel with narrow chunks so tiny rows cross several chunks."""
    x, r, w, b = _inputs((3, n), dtype, device, residual, offset=3.0)
    y, h = ak._add_layernorm(x, r, w, b, max_fused_n=0, loop_block_n=64 if n < 1000 else 512)
    _assert_close(y, h, x, r, w, b)


@pytest.mark.parametrize("loop", [False, True])
def test_large_mean_is_stable(loop, device):
    """Rows with mean 1000 and std 2: a naive E[h^2] - mean^2 would lose the variance in fp32."""
    x, r, w, b = _inputs((6, 300), torch.float32, device, offset=1000.0)
    kw = dict(max_fused_n=0, loop_block_n=64) if loop else {}
    y, h = ak._add_layernorm(x, r, w, b, **kw)
    truth, _ = _truth(x, r, w, b)
    err = (y.double() - truth).abs().max().item()
    assert err <= 1e-3, f"max error {err:.3g} with a large row mean (loop={loop})"


@pytest.mark.parametrize("which", ["weight", "bias", "both"])
def test_optional_affine(which, device):
    x, r, w, b = _inputs((4, 33), torch.float32, device)
    w = None if which in ("weight", "both") else w
    b = None if which in ("bias", "both") else b
    y, h = ak.add_layernorm(x, r, w, b, eps=1e-6)
    _assert_close(y, h, x, r, w, b, eps=1e-6)


def test_fp32_affine_with_half_input(device):
    """LayerNorm weights kept in fp32 while activations are bf16."""
    x, r, _, _ = _inputs((5, 80), torch.bfloat16, device)
    w, b = torch.randn(80, device=device), torch.randn(80, device=device)
    y, h = ak.add_layernorm(x, r, w, b)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.bfloat16
    y_ref, _ = add_layernorm_ref(x, r, w, b)
    err = (y.float() - y_ref.float()).abs().max().item()
    assert err <= 2 * ULP[torch.bfloat16] * y_ref.abs().max().item(), f"max error {err:.3g}"


def test_strided_rows(device):
    """A column slice (row stride > N) reads in place; a transposed batch is copied; results match either way."""
    big = torch.randn(6, 200, device=device)
    x = big[:, 10:90]  # (6, 80), row stride 200
    r = torch.randn(6, 80, device=device)
    w, b = torch.randn(80, device=device), torch.randn(80, device=device)
    y, h = ak.add_layernorm(x, r, w, b)
    _assert_close(y, h, x, r, w, b)
    xt = torch.randn(5, 3, 80, device=device).transpose(0, 1)  # leading dims do not collapse
    rt = torch.randn(80, 5, 3, device=device).permute(2, 1, 0)  # last dim not contiguous
    y, h = ak.add_layernorm(xt, rt, w, b)
    _assert_close(y, h, xt, rt, w, b)
    y, h = ak.add_layernorm(x, None, w, b)
    _assert_close(y, h, x, None, w, b)


def test_empty_rows(device):
    x = torch.randn(0, 80, device=device)
    y, h = ak.add_layernorm(x, torch.randn(0, 80, device=device), None, None)
    assert y.shape == (0, 80) and h.shape == (0, 80)


def test_errors(device):
    x = torch.randn(4, 80, device=device)
    with pytest.raises(ValueError, match=r"residual has shape \(4, 81\)"):
        ak.add_layernorm(x, torch.randn(4, 81, device=device), None, None)
    with pytest.raises(ValueError, match=r"weight must have shape \(80,\)"):
        ak.add_layernorm(x, None, torch.randn(81, device=device), None)
    with pytest.raises(ValueError, match=r"bias must have shape \(80,\)"):
        ak.add_layernorm(x, None, None, torch.randn(2, 40, device=device))
    with pytest.raises(TypeError, match="x has dtype int64"):
        ak.add_layernorm(torch.ones(4, 80, dtype=torch.long, device=device), None, None, None)
    with pytest.raises(TypeError, match="residual has dtype float16"):
        ak.add_layernorm(x, x.half(), None, None)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ak.add_layernorm(x, None, None, None, eps=-1.0)


def test_not_supported_reasons(device):
    x = torch.randn(4, 80, device=device)
    assert ak.add_layernorm_not_supported(x, x, None, None) == []
    reasons = ak.add_layernorm_not_supported(x, x.half(), None, None)
    assert len(reasons) == 1 and "residual" in reasons[0], reasons
    reasons = ak.add_layernorm_not_supported(x.double(), None, None, None)
    assert len(reasons) == 1 and "float64" in reasons[0], reasons


def test_dispatcher_runs_kernel_and_falls_back(device):
    from xlmrxl.backend import Backend

    be = Backend("triton")
    x, r, w, b = _inputs((2, 3, 80), torch.float32, device)
    y, h = be.add_layernorm(x, r, w, b)
    _assert_close(y, h, x, r, w, b)
    # float64 is not a kernel dtype: the guarded kernel runs the reference instead of failing
    y, h = be.add_layernorm(x.double(), r.double(), w.double(), b.double())
    assert y.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,rows", [(2560, 16384), (4096, 8192), (10240, 4096), (20000, 512)])
def test_xl_shapes_gpu(n, rows, dtype, device):
    x, r, w, b = _inputs((rows, n), dtype, device)
    y, h = ak.add_layernorm(x, r, w, b)
    _assert_close(y, h, x, r, w, b)
    y, h = ak.add_layernorm(x, None, w, b)
    _assert_close(y, h, x, None, w, b)
