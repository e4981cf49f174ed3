"""float64 end to end in the kernels package: every reference that upcasts computes fp64 inputs in fp64 (not fp32),
and every kernel launcher given fp64 inputs returns the fp64 reference result (there is no fp64 kernel), so a
``model.double()`` keeps fp64 precision (differences around 1e-12, not 1e-7)."""

import pytest
import torch
import torch.nn.functional as F

import xlmrxl_kernels as K
from xlmrxl_kernels import reference as R

TOL = 1e-12  # fp32 anywhere in the chain shows up as ~1e-7


def _d(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _err(a, b):
    assert a.dtype == torch.float64, a.dtype
    return (a - b).abs().max().item()


def test_add_layernorm_fp64():
    x, r, w, b = _d(3, 5, 24), _d(3, 5, 24), _d(24), _d(24)
    truth = F.layer_norm(x + r, (24,), w, b, 1e-5)
    for fn in (R.add_layernorm_ref, K.add_layernorm):
        y, h = fn(x, r, w, b, 1e-5)
        assert _err(y, truth) < TOL and _err(h, x + r) == 0


def test_attention_fp64():
    q, k, v = _d(2, 3, 5, 16), _d(2, 3, 7, 16), _d(2, 3, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    truth = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    for fn in (R.attention_ref, K.attention):
        assert _err(fn(q, k, v, mask), truth) < TOL
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    qp, kp, vp = _d(5, 3, 16), _d(5, 3, 16), _d(5, 3, 16)
    want = R.attention_varlen_ref(qp, kp, vp, cu, cu, 3, 3, causal=True)
    got = K.attention_varlen(qp, kp, vp, cu, cu, 3, 3, causal=True)
    assert _err(got, want) == 0
    one = F.scaled_dot_product_attention(
        qp[:2].transpose(0, 1), kp[:2].transpose(0, 1), vp[:2].transpose(0, 1), is_causal=True
    )
    assert _err(got[:2], one.transpose(0, 1)) < TOL


@pytest.mark.parametrize("upcast", [False, True])
def test_linear_fp64(upcast):
    x, w, b, r = _d(4, 6, 32), _d(20, 32), _d(20), _d(4, 6, 20)
    lin = x @ w.T + b
    assert _err(R.linear_gelu_ref(x, w, b, upcast=upcast), F.gelu(lin)) < TOL
    assert _err(R.linear_residual_ref(x, w, b, r, upcast=upcast), r + lin) < TOL
    assert _err(K.linear_gelu(x, w, b), F.gelu(lin)) < TOL
    assert _err(K.linear_residual(x, w, b, r), r + lin) < TOL


def test_int4_fp64():
    w = _d(16, 64)
    qw, s, z = R.quantize_int4_ref(w, 32)
    assert s.dtype == torch.float64
    wd = R.dequantize_int4_ref(qw, s, z, 32)
    assert wd.dtype == torch.float64
    # fp64 quantization error is the int4 rounding only, at most half a step per element
    step = s.t().repeat_interleave(32, dim=1)
    assert ((wd - w).abs() <= step / 2 + 1e-12).all()
    x = _d(3, 64)
    want = F.gelu(x @ wd.T)
    assert _err(R.int4_matmul_ref(x, qw, s, z, 32, activation="gelu", upcast=True), want) < TOL
    assert _err(K.int4_matmul(x, qw, s, z, 32, activation="gelu"), want) < TOL
