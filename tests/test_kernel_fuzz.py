"""Property-based fuzzing (hypothesis, bounded) of the kernel launchers' input validation, plus the host-side
validation of varlen lengths.

Random shapes, dtypes, strides and mask shapes: each call either returns what the reference returns (within the
dtype's tolerance) or raises a clear ValueError / TypeError; never another exception, NaN where the reference has
none, or a silently wrong result. Tiny sizes under the Triton interpreter; a few dozen examples per launcher."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlmrxl_kernels as K
from xlmrxl_kernels import reference as R

pytestmark = pytest.mark.triton

FUZZ = settings(
    max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
DTYPES = [torch.float32, torch.float16, torch.float64, torch.int32]
TOL = {torch.float32: 3e-5, torch.float16: 3e-2, torch.float64: 1e-12}


def _tensor(shape, dtype, transposed):
    t = torch.randn(*shape) if dtype.is_floating_point else torch.randint(-3, 3, shape)
    t = t.to(dtype)
    if transposed and t.dim() >= 2:  # same shape, other strides (last dim not contiguous)
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


def _same(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    assert torch.isnan(got).sum() <= torch.isnan(want).sum(), "NaN the reference does not have"
    err = (got.double() - want.double()).nan_to_num().abs().max().item() if got.numel() else 0.0
    assert err <= TOL[dtype], f"max error {err:.3g} > {TOL[dtype]} ({dtype})"


def _expect(kernel, reference, dtype):
    """Run both; the kernel must match a reference that succeeds, and fail cleanly otherwise."""
    try:
        got = kernel()
    except (ValueError, TypeError) as exc:
        assert str(exc), "an error must say what was wrong"
        return
    want = reference()
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        _same(g, w, dtype)


@FUZZ
@given(
    B=st.integers(0, 2),
    H=st.integers(1, 2),
    S_q=st.integers(0, 5),
    S_k=st.integers(0, 6),
    D=st.sampled_from([1, 8, 16, 20, 33]),
    D_k=st.sampled_from([None, 7]),
    dtype=st.sampled_from(DTYPES),
    transposed=st.booleans(),
    mask_kind=st.sampled_from([None, "ok", "bad-shape", "bool", "int"]),
    causal=st.booleans(),
)
def test_fuzz_attention(B, H, S_q, S_k, D, D_k, dtype, transposed, mask_kind, causal):
    q = _tensor((B, H, S_q, D), dtype, transposed)
    k = _tensor((B, H, S_k, D_k or D), dtype, transposed)
    v = _tensor((B, H, S_k, D_k or D), dtype, False)
    mask = None
    if mask_kind == "bad-shape":
        mask = torch.ones(B + 1, S_k)
    elif mask_kind is not None:
        mask = torch.rand(B, S_k) > 0.3
        mask = mask.long() if mask_kind == "int" else mask
    _expect(
        lambda: K.attention(q, k, v, mask, causal=causal),
        lambda: R.attention_ref(q, k, v, mask, causal=causal),
        dtype,
    )


@FUZZ
@given(
    lens=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    extra_rows=st.integers(0, 2),
    D=st.sampled_from([8, 16, 24]),
    dtype=st.sampled_from(DTYPES),
    cu_dtype=st.sampled_from([torch.int32, torch.int64]),
    max_delta=st.integers(-1, 1),
    causal=st.booleans(),
    host=st.booleans(),
)
def test_fuzz_attention_varlen(lens, extra_rows, D, dtype, cu_dtype, max_delta, causal, host):
    T = sum(lens) + extra_rows
    q, k, v = (_tensor((T, 2, D), dtype, False) for _ in range(3))
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=cu_dtype)
    mx = max(lens) + max_delta
    kw = dict(causal=causal)
    if host:
        kw.update(seqlens_q=lens, seqlens_k=lens)

    def reference():
        if mx < max(lens):
            raise AssertionError("a max_seqlen below the longest sequence must be refused")
        return R.attention_varlen_ref(q, k, v, cu, cu, mx, mx, causal=causal)[: sum(lens)]

    _expect(lambda: K.attention_varlen(q, k, v, cu, cu, mx, mx, **kw)[: sum(lens)], reference, dtype)


@FUZZ
@given(
    M=st.integers(0, 5),
    N=st.integers(1, 9),
    K_=st.integers(1, 40),
    K_w=st.sampled_from([None, 3]),
    dtype=st.sampled_from(DTYPES),
    w_dtype=st.sampled_from([None, torch.float16]),
    transposed=st.booleans(),
    bias=st.sampled_from([None, "ok", "bad"]),
    residual=st.booleans(),
)
def test_fuzz_linear(M, N, K_, K_w, dtype, w_dtype, transposed, bias, residual):
    x = _tensor((M, K_), dtype, transposed)
    w = _tensor((N, K_w or K_), w_dtype or dtype, transposed)
    b = None if bias is None else _tensor((N if bias == "ok" else N + 1,), dtype, False)
    if residual:
        r = _tensor((M, N), dtype, False)
        _expect(lambda: K.linear_residual(x, w, b, r), lambda: R.linear_residual_ref(x, w, b, r, upcast=True), dtype)
    else:
        _expect(lambda: K.linear_gelu(x, w, b), lambda: R.linear_gelu_ref(x, w, b, upcast=True), dtype)


@FUZZ
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    N=st.integers(1, 40),
    dtype=st.sampled_from(DTYPES),
    res=st.sampled_from([None, "ok", "bad-shape", "other-dtype"]),
    w=st.sampled_from([None, "ok", "bad"]),
    transposed=st.booleans(),
    eps=st.sampled_from([1e-5, -1.0]),
)
def test_fuzz_add_layernorm(shape, N, dtype, res, w, transposed, eps):
    x = _tensor((*shape, N), dtype, transposed)
    r = None
    if res == "ok":
        r = _tensor((*shape, N), dtype, False)
    elif res == "bad-shape":
        r = _tensor((*shape, N + 1), dtype, False)
    elif res == "other-dtype":
        r = _tensor((*shape, N), torch.float16 if dtype != torch.float16 else torch.float32, False)
    weight = None if w is None else torch.randn(N if w == "ok" else N + 2)

    def reference():
        if eps < 0:
            raise AssertionError("a negative eps must be refused")
        return R.add_layernorm_ref(x, r, weight, None, eps)

    _expect(lambda: K.add_layernorm(x, r, weight, None, eps), reference, dtype)


# -- host-side validation of varlen lengths (no device sync) ----------------------------------------------------------
def _packed(lens, D=16):
    T = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    return [torch.randn(T, 2, D) for _ in range(3)], cu


@pytest.mark.parametrize(
    "seqlens,mx,match",
    [
        ([3, 2], 3, None),
        ([3, 2, 1], 3, "has 3 lengths but cu_seqlens describes 2"),
        ([3, -1], 3, r"seqlens_q\[1\] = -1 is negative"),
        ([4, 2], 4, "sum to 6 rows but the packed tensor has 5"),
        ([3, 2], 2, "sequence of 3 tokens but max_seqlen is 2"),
        (["a", 2], 3, "host integers"),
    ],
)
def test_host_seqlens(seqlens, mx, match):
    (q, k, v), cu = _packed([3, 2])
    call = lambda: K.attention_varlen(q, k, v, cu, cu, mx, mx, seqlens_q=seqlens)  # noqa: E731
    if match is None:
        torch.testing.assert_close(call(), R.attention_varlen_ref(q, k, v, cu, cu, mx, mx), atol=2e-5, rtol=0)
    else:
        with pytest.raises((ValueError, TypeError), match=match):
            call()


def test_host_seqlens_never_sync(monkeypatch):
    """With host lengths, validation reads no tensor values (``.tolist()`` / ``.item()`` would sync on a GPU)."""
    import importlib

    from xlmrxl_kernels import attention as _  # noqa: F401  (the module is loaded)

    A = importlib.import_module("xlmrxl_kernels.flash")
    (q, k, v), cu = _packed([3, 2])

    def no_sync(*a, **kw):
        raise AssertionError("host validation must not read device values")

    monkeypatch.setattr(torch.Tensor, "tolist", no_sync)
    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    A.check_host_seqlens(q, k, cu, 3, 3, [3, 2])
    with pytest.raises(ValueError, match="max_seqlen"):
        A.check_host_seqlens(q, k, cu, 2, 3, [3, 2])


def test_bad_cu_seqlens_cannot_read_or_write_out_of_bounds(monkeypatch):
    """The kernel clamps every offset to the packed tensors: with the host checks switched off, garbage offsets give
    garbage rows, never an access outside q / k / v / out (the interpreter raises on one)."""
    import importlib

    A = importlib.import_module("xlmrxl_kernels.flash")
    monkeypatch.setattr(A, "_check_cu_seqlens", lambda *a, **k: None)
    (q, k, v), _ = _packed([3, 2])
    for bad in ([0, 9, 5], [7, 2, 5], [0, -4, 5], [-9, 40, 60]):
        cu = torch.tensor(bad, dtype=torch.int32)
        out = K.attention_varlen(q, k, v, cu, cu, 64, 64)
        assert out.shape == q.shape
