"""Property-based fuzzing (hypothesis, bounded) of the kernels' launchers' input validation.

``attention_varlen`` (cu_seqlens offsets, max_seqlen, shapes, dtypes) and ``add_layernorm`` (shapes, dtypes, missing
parts) with random, sometimes corrupted arguments: each call either equals the PyTorch reference (fp32) or raises a
ValueError / TypeError with a message; never another exception, an out-of-bounds read or a silently different
result. On CPU the Triton kernels run in the interpreter at these tiny shapes (conftest sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xlmrxl_kernels.reference import add_layernorm_ref, attention_varlen_ref

ak = pytest.importorskip("xlmrxl_kernels.flash")
aln = pytest.importorskip("xlmrxl_kernels.norm")
pytest.importorskip("triton")

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _clear(exc: Exception) -> None:
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
    assert str(exc).strip(), f"a {type(exc).__name__} without a message"


@st.composite
def varlen_calls(draw):
    lengths = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    H, D = 2, draw(st.sampled_from([8, 16]))
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    total = cu[-1]
    max_len = max(lengths)
    fault = draw(st.sampled_from(["none"] * 6 + ["start", "decrease", "beyond", "max_small", "int64", "2d", "count"]))
    if fault == "start":
        cu[0] = 1
    elif fault == "decrease":
        if len(cu) > 2:
            cu[1], cu[2] = cu[2] + 1, cu[1]
        else:
            fault = "none"  # one sequence: nothing can decrease
    elif fault == "beyond":
        cu[-1] += draw(st.integers(1, 4))
    cu_t = torch.tensor(cu, dtype=torch.int64 if fault == "int64" else torch.int32)
    if fault == "2d":
        cu_t = cu_t[None]
    cu_k = cu_t if fault != "count" else torch.tensor(cu + [cu[-1]], dtype=torch.int32)
    if fault == "max_small" and not max_len:
        fault = "none"  # every sequence is empty: no smaller maximum
    max_q = max_len - 1 if fault == "max_small" else max_len
    q, k, v = (torch.randn(total, H, D) for _ in range(3))
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu_t, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_len), fault


@SETTINGS
@given(call=varlen_calls(), causal=st.booleans())
def test_attention_varlen_validates_or_equals_reference(call, causal):
    kw, fault = call
    try:
        out = ak.attention_varlen(**kw, causal=causal)
    except Exception as exc:
        _clear(exc)
        event(f"{type(exc).__name__} ({fault})")
        return
    event("result" if fault == "none" else f"accepted ({fault})")
    ref = attention_varlen_ref(**kw, causal=causal)
    rows = int(kw["cu_seqlens_q"].reshape(-1)[-1])
    assert out.shape == ref.shape
    assert float((out[:rows] - ref[:rows]).abs().max()) <= 1e-5 if rows else True
    assert fault in ("none",), f"corrupted cu_seqlens ({fault}) were accepted"


@st.composite
def layernorm_calls(draw):
    rows, hidden = draw(st.integers(0, 4)), draw(st.sampled_from([8, 13, 64]))
    x = torch.randn(rows, hidden)
    fault = draw(st.sampled_from(["none"] * 6 + ["residual_shape", "weight_shape", "int_x", "residual_none", "3d"]))
    residual = torch.randn(rows, hidden) if fault != "residual_none" else None
    if fault == "residual_shape":
        residual = torch.randn(rows, hidden + 1)
    weight, bias = 1 + 0.1 * torch.randn(hidden), 0.1 * torch.randn(hidden)
    if fault == "weight_shape":
        weight = weight[:-1]
    if fault == "int_x":
        x = x.long()
    if fault == "3d":
        x, residual = x[None], residual[None]
    return (x, residual, weight, bias), fault


@SETTINGS
@given(call=layernorm_calls())
def test_add_layernorm_validates_or_equals_reference(call):
    args, fault = call
    try:
        out, summed = aln.add_layernorm(*args)
    except Exception as exc:
        _clear(exc)
        event(f"{type(exc).__name__} ({fault})")
        return
    event(f"result ({fault})")
    assert fault in ("none", "residual_none", "3d"), f"a bad call ({fault}) was accepted"
    ref_out, ref_sum = add_layernorm_ref(*args)
    assert out.shape == ref_out.shape and summed.shape == ref_sum.shape
    if out.numel():
        assert float((out - ref_out).abs().max()) <= 1e-5
        assert float((summed - ref_sum).abs().max()) <= 1e-6
