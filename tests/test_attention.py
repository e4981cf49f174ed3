"""attention / attention_varlen (Triton) vs their references: head dims 16 / 64 / 80 / 128, padding masks with a fully
padded row, S_q = 1 (with and without split-KV), keys longer than queries, causal with and without offset, strided
q/k/v views of a fused QKV output, varlen with lengths 0 and 1, packed vs padded equivalence; fp32 tight, fp16 / bf16
by the 2x rule (our error vs fp32 truth <= 2x PyTorch's own error in that dtype + a small atol); errors, dispatch.

Under the CPU interpreter, bf16 ``tl.dot`` reads the raw bits wrongly, so the kernel upcasts bf16 dot operands to
fp32 there (``DOT_F32``); on a GPU bf16 runs native. Realistic XL shapes carry the ``gpu`` marker."""

import pytest
import torch

from xlmrxl_kernels.reference import attention_ref, attention_varlen_ref

ak = pytest.importorskip("xlmrxl_kernels.flash")

pytestmark = pytest.mark.triton

FP32_TOL = 2e-5
HALF_ATOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _qkv(B, H, S_q, S_k, D, dtype, device):
    q = torch.randn(B, H, S_q, D, device=device).to(dtype)
    k = torch.randn(B, H, S_k, D, device=device).to(dtype)
    v = torch.randn(B, H, S_k, D, device=device).to(dtype)
    return q, k, v


def _padding_mask(B, S_k, device, fully_padded_row=0):
    lens = torch.randint(1, S_k + 1, (B,))
    mask = torch.arange(S_k)[None, :] < lens[:, None]
    if fully_padded_row is not None:
        mask[fully_padded_row] = False
    return mask.to(device)


def _check(out, q, k, v, mask=None, *, scale=None, causal=False, varlen=None):
    """Shape / dtype first, then numerics: fp32 within FP32_TOL of the reference, half by the 2x rule."""
    if varlen is None:
        ref = lambda **kw: attention_ref(q, k, v, mask, scale=scale, causal=causal, **kw)  # noqa: E731
        truth_fn = lambda: attention_ref(q.float(), k.float(), v.float(), mask, scale=scale, causal=causal)  # noqa: E731
        shape = (q.shape[0], q.shape[1], q.shape[2], v.shape[3])
    else:
        ref = lambda **kw: attention_varlen_ref(q, k, v, *varlen, scale=scale, causal=causal, **kw)  # noqa: E731
        truth_fn = lambda: attention_varlen_ref(  # noqa: E731
            q.float(), k.float(), v.float(), *varlen, scale=scale, causal=causal
        )
        shape = tuple(q.shape)
    assert tuple(out.shape) == shape, f"shape {tuple(out.shape)} != {shape}"
    assert out.dtype == q.dtype, f"dtype {out.dtype} != {q.dtype}"
    assert not out.isnan().any(), "output has NaN (an unwritten element or a fully masked row)"
    truth = truth_fn()
    err = (out.float() - truth).abs().max().item()
    if q.dtype == torch.float32:
        assert err <= FP32_TOL, f"fp32 max error {err:.3g} > {FP32_TOL}"
    else:
        torch_err = (ref(upcast=False).float() - truth).abs().max().item()
        tol = 2 * torch_err + HALF_ATOL[q.dtype]
        assert err <= tol, f"{q.dtype} max error {err:.3g} > 2 x PyTorch's {torch_err:.3g} + {HALF_ATOL[q.dtype]}"
    return truth


@pytest.mark.parametrize("d", [16, 64, 80, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_head_dims_padding_mask(d, causal, device):
    q, k, v = _qkv(3, 2, 19, 19, d, torch.float32, device)
    mask = _padding_mask(3, 19, device, fully_padded_row=1)
    out = ak.attention(q, k, v, mask, causal=causal)
    _check(out, q, k, v, mask, causal=causal)
    assert out[1].abs().max().item() == 0.0, "a fully padded row must give zeros"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 80])
def test_half_precision_2x_rule(dtype, d, device):
    q, k, v = _qkv(2, 2, 21, 35, d, dtype, device)
    mask = _padding_mask(2, 35, device, fully_padded_row=None)
    out = ak.attention(q, k, v, mask)
    _check(out, q, k, v, mask)
    out = ak.attention(q, k, v, causal=True)
    _check(out, q, k, v, causal=True)


@pytest.mark.parametrize("d", [16, 80, 24, 72])
def test_odd_head_dims(d, device):
    """Head dims that need a padded remainder block (24 = 16 + 8 of 16, 72 = 64 + 8 of 16)."""
    q, k, v = _qkv(1, 2, 9, 13, d, torch.float32, device)
    _check(ak.attention(q, k, v), q, k, v)


@pytest.mark.parametrize("num_splits", [None, 1, 4])
@pytest.mark.parametrize("d", [64, 80])
def test_decode_single_query(num_splits, d, device):
    """S_q = 1 against 40 keys: the decode kernel, with and without split-KV (forced, as a CPU has no SM count)."""
    q, k, v = _qkv(2, 3, 1, 40, d, torch.float32, device)
    mask = _padding_mask(2, 40, device, fully_padded_row=None)
    mask[1, :5] = False  # left padding too
    out = ak._attention(q, k, v, mask, num_splits=num_splits)
    _check(out, q, k, v, mask)
    out = ak._attention(q, k, v, None, causal=True, num_splits=num_splits)
    _check(out, q, k, v, None, causal=True)


@pytest.mark.parametrize("s_q", [3, 9])
def test_split_kv_with_empty_splits(s_q, device):
    """8 splits over 20 keys: some splits get no key at all; a fully padded row stays zero. S_q = 3 runs the
    one-row decode kernel, S_q = 9 the tiled kernel; both share the combine step."""
    q, k, v = _qkv(2, 2, s_q, 20, 32, torch.float32, device)
    mask = _padding_mask(2, 20, device, fully_padded_row=0)
    out = ak._attention(q, k, v, mask, num_splits=8, causal=True)
    _check(out, q, k, v, mask, causal=True)
    assert out[0].abs().max().item() == 0.0


@pytest.mark.parametrize("s_q,s_k", [(4, 37), (5, 37), (17, 40), (30, 12)])
@pytest.mark.parametrize("causal", [False, True])
def test_keys_longer_or_shorter_than_queries(s_q, s_k, causal, device):
    """Causal aligns queries to the end of the keys; with S_q > S_k the first S_q - S_k queries see nothing.
    S_q = 4 takes the decode kernel, the others the tiled one."""
    q, k, v = _qkv(2, 2, s_q, s_k, 80, torch.float32, device)
    out = ak.attention(q, k, v, causal=causal)
    _check(out, q, k, v, causal=causal)
    if causal and s_q > s_k:
        assert out[:, :, : s_q - s_k].abs().max().item() == 0.0, "queries with no visible key must give zeros"


def test_fused_qkv_views_and_output_layout(device):
    """q/k/v as strided views into one (B, S, 3, H, D) projection output, as the model produces them."""
    B, S, H, D = 2, 23, 3, 80
    qkv = torch.randn(B, S, 3, H, D, device=device)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, S, D), last dim contiguous
    assert not q.is_contiguous()
    mask = _padding_mask(B, S, device, fully_padded_row=None)
    out = ak.attention(q, k, v, mask, scale=0.3)
    _check(out, q, k, v, mask, scale=0.3)
    assert out.transpose(1, 2).is_contiguous(), "out should be a (B, S, H, D) buffer seen as (B, H, S, D)"
    # last dim not contiguous: copied first, still correct
    qt = torch.randn(B, H, D, S, device=device).transpose(2, 3)
    _check(ak.attention(qt, k, v, mask), qt, k, v, mask)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32, torch.float16])
def test_mask_dtypes(mask_dtype, device):
    q, k, v = _qkv(2, 2, 7, 11, 16, torch.float32, device)
    mask = _padding_mask(2, 11, device, fully_padded_row=None)
    mask[0, 3] = False  # a hole, not only trailing padding
    out = ak.attention(q, k, v, mask.to(mask_dtype))
    _check(out, q, k, v, mask)


def _pack(lens_q, lens_k, H, D, dtype, device):
    cu_q = torch.tensor([0] + list(lens_q)).cumsum(0).to(torch.int32).to(device)
    cu_k = torch.tensor([0] + list(lens_k)).cumsum(0).to(torch.int32).to(device)
    q = torch.randn(int(sum(lens_q)), H, D, device=device).to(dtype)
    k = torch.randn(int(sum(lens_k)), H, D, device=device).to(dtype)
    v = torch.randn(int(sum(lens_k)), H, D, device=device).to(dtype)
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [16, 80])
def test_varlen_lengths_with_zero_and_one(causal, d, device):
    lens = [5, 0, 1, 17, 33]
    q, k, v, cu_q, cu_k = _pack(lens, lens, 2, d, torch.float32, device)
    varlen = (cu_q, cu_k, max(lens), max(lens))
    out = ak.attention_varlen(q, k, v, *varlen, causal=causal)
    _check(out, q, k, v, causal=causal, varlen=varlen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_varlen_half(dtype, device):
    lens_q, lens_k = [3, 1, 20], [9, 1, 20]
    q, k, v, cu_q, cu_k = _pack(lens_q, lens_k, 2, 64, dtype, device)
    varlen = (cu_q, cu_k, max(lens_q), max(lens_k))
    _check(ak.attention_varlen(q, k, v, *varlen, causal=True), q, k, v, causal=True, varlen=varlen)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_varlen_decode(num_splits, device):
    """One query per sequence against caches of different lengths (incl. an empty one)."""
    lens_q, lens_k = [1, 1, 1, 1], [30, 0, 1, 9]
    q, k, v, cu_q, cu_k = _pack(lens_q, lens_k, 2, 80, torch.float32, device)
    varlen = (cu_q, cu_k, 1, max(lens_k))
    out = ak._attention_varlen(q, k, v, *varlen, causal=True, num_splits=num_splits)
    _check(out, q, k, v, causal=True, varlen=varlen)
    assert out[1].abs().max().item() == 0.0, "a query with an empty key sequence must give zeros"


@pytest.mark.parametrize("causal", [False, True])
def test_packed_equals_padded(causal, device):
    """The padding-free encoder's varlen call equals padded attention with the key mask, on real tokens."""
    B, H, S, D = 3, 2, 21, 80
    lens = [21, 8, 1]
    q, k, v, cu_q, cu_k = _pack(lens, lens, H, D, torch.float32, device)
    mask = torch.arange(S, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
    padded = []
    for t in (q, k, v):
        p = torch.randn(B, S, H, D, device=device)  # garbage in the padding: must not leak into real tokens
        p[mask] = t
        padded.append(p.transpose(1, 2))
    out_pad = ak.attention(*padded, mask, causal=causal)  # causal on right padding: same as per sequence
    out_var = ak.attention_varlen(q, k, v, cu_q, cu_k, S, S, causal=causal)
    assert out_var.shape == q.shape and out_var.dtype == q.dtype
    err = (out_pad.transpose(1, 2)[mask] - out_var).abs().max().item()
    assert err <= FP32_TOL, f"packed vs padded max difference {err:.3g}"


def test_empty_inputs(device):
    q, k, v = _qkv(2, 2, 0, 5, 16, torch.float32, device)
    assert ak.attention(q, k, v).shape == (2, 2, 0, 16)
    q, k, v = _qkv(1, 2, 3, 0, 16, torch.float32, device)
    out = ak.attention(q, k, v)
    assert out.shape == (1, 2, 3, 16) and out.abs().max().item() == 0.0


def test_errors(device):
    q, k, v = _qkv(2, 2, 5, 6, 16, torch.float32, device)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, S_k\) = \(2, 6\)"):
        ak.attention(q, k, v, torch.ones(2, 1, 5, 6, device=device))
    with pytest.raises(ValueError, match="q has head dim 16 but k/v have 32"):
        ak.attention(q, *_qkv(2, 2, 5, 6, 32, torch.float32, device)[1:])
    with pytest.raises(TypeError, match="k has dtype float16"):
        ak.attention(q, k.half(), v)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        ak.attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="batch and head counts must match"):
        ak.attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="head dim 300 is outside"):
        ak.attention(*_qkv(1, 1, 2, 2, 300, torch.float32, device))
    with pytest.raises(ValueError, match="q must be 4-D"):
        ak.attention(q[0], k, v)
    lens = [3, 4]
    qp, kp, vp, cu_q, cu_k = _pack(lens, lens, 2, 16, torch.float32, device)
    with pytest.raises(ValueError, match="cu_seqlens_q must be int32"):
        ak.attention_varlen(qp, kp, vp, cu_q.long(), cu_k, 4, 4)
    with pytest.raises(ValueError, match="cu_seqlens_k must be nondecreasing"):
        ak.attention_varlen(qp, kp, vp, cu_q, torch.tensor([0, 5, 4], dtype=torch.int32, device=device), 4, 5)
    with pytest.raises(ValueError, match="max_seqlen for cu_seqlens_q is 3"):
        ak.attention_varlen(qp, kp, vp, cu_q, cu_k, 3, 4)
    with pytest.raises(ValueError, match=r"cu_seqlens_q\[-1\] = 7 exceeds the 6 packed rows"):
        ak.attention_varlen(qp[:6], kp, vp, cu_q, cu_k, 4, 4)
    with pytest.raises(ValueError, match="both have B\\+1 entries"):
        ak.attention_varlen(qp, kp, vp, cu_q, cu_k[:2], 4, 4)


def test_not_supported_reasons(device):
    q, k, v = _qkv(1, 2, 3, 3, 16, torch.float32, device)
    assert ak.attention_not_supported(q, k, v) == []
    reasons = ak.attention_not_supported(q.double(), k.double(), v.double())
    assert len(reasons) == 1 and "float64" in reasons[0], reasons
    big = _qkv(1, 1, 2, 2, 320, torch.float32, device)
    assert any("320" in r for r in ak.attention_not_supported(*big))
    assert any("320" in r for r in ak.attention_varlen_not_supported(big[0][0], big[1][0], big[2][0], None, None, 2, 2))


def test_decode_launch_shape_is_a_heuristic(monkeypatch):
    """generate grows the KV cache one key per step: the decode kernel picks its launch shape from the head dim
    alone (no autotuning at each new power of two of S_k, and nothing to tune inside CUDA-graph capture)."""
    import importlib

    A = importlib.import_module("xlmrxl_kernels.flash")
    assert not hasattr(A._attn_decode_kernel, "configs"), "the decode kernel must not be autotuned"
    monkeypatch.setattr(A, "interpreting", lambda: False)
    for block_d, block_n in ((16, 128), (64, 128), (128, 64), (256, 32)):
        got = A._decode_launch_params(block_d)
        assert got == dict(BLOCK_N=block_n, num_warps=4, num_stages=3), f"BLOCK_D={block_d}: {got}"


def test_dispatcher_runs_kernel_and_falls_back(device):
    from xlmrxl.backend import Backend

    be = Backend("triton")
    q, k, v = _qkv(2, 2, 9, 9, 80, torch.float32, device)
    mask = _padding_mask(2, 9, device)
    _check(be.attention(q, k, v, mask), q, k, v, mask)
    lens = [4, 0, 5]
    qp, kp, vp, cu_q, cu_k = _pack(lens, lens, 2, 80, torch.float32, device)
    out = be.attention_varlen(qp, kp, vp, cu_q, cu_k, 5, 5, causal=True)
    _check(out, qp, kp, vp, causal=True, varlen=(cu_q, cu_k, 5, 5))
    out = be.attention(q.double(), k.double(), v.double(), mask)  # not a kernel dtype: the reference runs
    assert out.dtype == torch.float64


# ---- realistic XL / XXL shapes (GPU only) ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [80, 128])
def test_xl_shapes_gpu(d, dtype, device):
    B, H, S = 32, 32, 512
    q, k, v = _qkv(B, H, S, S, d, dtype, device)
    lens = torch.randint(int(0.2 * S), S + 1, (B,))
    mask = (torch.arange(S)[None, :] < lens[:, None]).to(device)
    out = ak.attention(q, k, v, mask)
    truth = _check(out, q, k, v, mask)
    # varlen on the packed real tokens gives the same real-token outputs, within the padded kernel's own error
    cu = torch.zeros(B + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    packed = [t.transpose(1, 2)[mask] for t in (q, k, v)]
    out_var = ak.attention_varlen(*packed, cu.to(device), cu.to(device), int(lens.max()), int(lens.max()))
    err = (out_var.float() - truth.transpose(1, 2)[mask]).abs().max().item()
    tol = 2 * (out.float() - truth).abs().max().item() + HALF_ATOL[dtype]
    assert err <= tol, f"varlen max error {err:.3g} > {tol:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 32])
def test_decode_gpu(B, device):
    q, k, v = _qkv(B, 32, 1, 512, 80, torch.bfloat16, device)
    mask = _padding_mask(B, 512, device, fully_padded_row=None)
    _check(ak.attention(q, k, v, mask), q, k, v, mask)
    _check(ak.attention(q, k, v, causal=True), q, k, v, causal=True)


# ---- the kernels compile for an H100 (sm_90) without one -------------------------------------------------------------

_AOT_SCRIPT = r"""
import importlib, json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
A = importlib.import_module("xlmrxl_kernels.flash")
L = importlib.import_module("xlmrxl_kernels.norm")
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

if not os.path.exists(tool):
    print("AOTSKIP no cuobjdump in this Triton install: register spills cannot be read")
    sys.exit(0)

def build(fn, types, consts, warps, stages):
    fn = fn.fn if hasattr(fn, "configs") else fn  # unwrap an Autotuner
    sig = {n: types.get(n, "i32") for n in fn.arg_names}
    sig.update({k: "constexpr" for k in consts})
    # what the launcher's specialisation gives for 16-byte aligned pointers and strides
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n].startswith("*") or (n.startswith("stride") and sig[n] == "i32")}
    k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, num_stages=stages))
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"STACK:(\d+)", out)
    if m is None:
        raise SystemExit(f"cuobjdump printed no STACK field: {out[:500]}")
    return int(m.group(1))

def attn_types(dt):
    return dict(Q="*" + dt, K="*" + dt, V="*" + dt, Out="*" + dt, Mask="*u8", OPart="*fp32", LPart="*fp32",
                CuQ="*i32", CuK="*i32", qk_scale="fp32")

def tiled(dt, d, varlen, mask, causal, bm, bn, w, s):
    d0, d1 = A._head_dim_blocks(d)
    return build(A._attn_fwd_kernel, attn_types(dt), dict(
        HEAD_DIM=d, BLOCK_D0=d0, BLOCK_D1=d1, PAD_D0=d0 > d, PAD_D1=d1 > 0 and d0 + d1 > d, IS_VARLEN=varlen,
        HAS_MASK=mask, IS_CAUSAL=causal, NUM_SPLITS=1, DOT_PRECISION="tf32", DOT_F32=False, BLOCK_M=bm,
        BLOCK_N=bn), w, s)

res = {}
try:
    probe = build(L._add_layernorm_loop_kernel, dict((n, "*fp32") for n in "XRWBYH"), dict(
        HAS_RES=False, HAS_W=False, HAS_B=False, BLOCK_N=16), 1, 1)
except Exception as exc:
    if isinstance(exc, triton.compiler.errors.CompilationError):
        raise
    print(f"AOTSKIP this Triton's ahead-of-time API differs: {type(exc).__name__}: {exc}")
    sys.exit(0)
res["tiled bf16 D80 mask 128x64w8"] = tiled("bf16", 80, False, True, False, 128, 64, 8, 3)
res["tiled fp16 D128 varlen causal 128x64w8"] = tiled("fp16", 128, True, False, True, 128, 64, 8, 3)
res["decode bf16 D80 mask causal split8"] = build(A._attn_decode_kernel, attn_types("bf16"), dict(
    HEAD_DIM=80, BLOCK_D=128, IS_VARLEN=False, HAS_MASK=True, IS_CAUSAL=True, NUM_SPLITS=8, BLOCK_N=64), 4, 3)
res["combine D80 split8"] = build(A._attn_combine_kernel, dict(OPart="*fp32", LPart="*fp32", Out="*bf16"),
                                  dict(HEAD_DIM=80, BLOCK_D=128, NUM_SPLITS=8), 4, 1)
ln = dict((n, "*bf16") for n in "XRWBYH")
ln["eps"] = "fp32"
res["add_layernorm bf16 2560"] = build(L._add_layernorm_kernel, ln, dict(
    HAS_RES=True, HAS_W=True, HAS_B=True, BLOCK_M=1, BLOCK_N=4096), 8, 1)
res["add_layernorm loop bf16"] = build(L._add_layernorm_loop_kernel, ln, dict(
    HAS_RES=True, HAS_W=True, HAS_B=True, BLOCK_N=4096), 8, 1)
print("AOT" + json.dumps(res))
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills():
    """Compile the hot kernel variants for sm_90 ahead of time (no GPU needed) and check the register stack stays
    0: catches GPU-only compile errors and register spills that the CPU interpreter cannot see."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real JIT functions, not interpreted
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=500
    )
    if proc.returncode != 0 and ("ptxas" in proc.stderr and "not found" in proc.stderr.lower()):
        pytest.skip("no ptxas in this Triton install")
    assert proc.returncode == 0, f"AOT compile failed:\n{proc.stderr[-3000:]}"
    skip = [ln for ln in proc.stdout.splitlines() if ln.startswith("AOTSKIP")]
    if skip:
        pytest.skip(skip[0][8:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("AOT")][-1]
    stacks = json.loads(line[3:])
    assert stacks and all(isinstance(s, int) for s in stacks.values()), f"every variant must report its stack: {stacks}"
    spilled = {name: s for name, s in stacks.items() if s}
    assert not spilled, f"register spills (stack bytes) on sm_90: {spilled}"
