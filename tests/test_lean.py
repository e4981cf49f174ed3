"""Lean launches (``xlmrxl_kernels.lean``): once a layer's call sites are bound, a forward makes no ``Autotuner.run``
call, no launch-plan lookup and no host read of ``cu_seqlens``, and computes the same bits as the public launchers."""

import pytest
import torch
from _oracle import make_inputs, random_model
from conftest import tiny_config_kwargs
from triton.runtime import autotuner

import xlmrxl
import xlmrxl_kernels as K
from xlmrxl_kernels import lean, table

pytestmark = pytest.mark.triton


def _model(seed=4):
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs())
    m = random_model(xlmrxl.XLMRobertaXLModel, cfg, seed=seed).set_backend("triton")
    m.set_cuda_graphs(False)
    return m, make_inputs(cfg, batch=3, seq=9, seed=seed, fully_padded_row=False)


class _Count:
    def __init__(self, monkeypatch, obj, name):
        self.n = 0
        real = getattr(obj, name)

        def counted(*a, **k):
            self.n += 1
            return real(*a, **k)

        monkeypatch.setattr(obj, name, counted)


def test_bound_forward_skips_the_autotuner_and_the_checks(monkeypatch):
    import sys

    m, inputs = _model()
    with torch.inference_mode():
        first = m(**inputs).last_hidden_state  # binds every site, records each launch
        runs = _Count(monkeypatch, autotuner.Autotuner, "run")
        att = sys.modules["xlmrxl_kernels.flash"]
        lg = sys.modules["xlmrxl_kernels.gemm"]
        checks = _Count(monkeypatch, att, "_check_cu_seqlens")
        plans = _Count(monkeypatch, lg, "_make_plan")
        tolist = _Count(monkeypatch, torch.Tensor, "tolist")
        second = m(**inputs).last_hidden_state
    assert runs.n == 0, f"{runs.n} Autotuner.run calls in a bound forward"
    assert checks.n == 0 and plans.n == 0
    assert tolist.n <= 2  # the mask check and the packing, once per forward each (3 layers: never per layer)
    assert torch.equal(first, second)


def test_lean_matches_the_public_launchers():
    torch.manual_seed(0)
    x, w, b, r = torch.randn(6, 64), torch.randn(96, 64), torch.randn(96), torch.randn(6, 96)
    for op, args in (("linear_gelu", (x, w, b)), ("linear_residual", (x, w, b, r))):
        fn = lean.BINDERS[op](args, {})
        public = next(e for e in table.build()[op] if e.kind == "triton").fn
        want = public(*args)
        for _ in range(2):  # the recording call, then the lean one
            assert torch.equal(fn(*args), want), op
    h, res, lw, lb = torch.randn(6, 64), torch.randn(6, 64), torch.randn(64), torch.randn(64)
    fn = lean.BINDERS["add_layernorm"]((h, res, lw, lb, 1e-5), {})
    want = K.add_layernorm(h, res, lw, lb)
    for _ in range(2):
        got = fn(h, res, lw, lb, 1e-5)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    q = torch.randn(7, 2, 16)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    kw = {"scale": 0.25, "causal": True}
    fn = lean.BINDERS["attention_varlen"]((q, q, q, cu, cu, 4, 4), kw)
    want = K.attention_varlen(q, q, q, cu, cu, 4, 4, **kw)
    for _ in range(2):
        assert torch.equal(fn(q, q, q, cu, cu, 4, 4, **kw), want)
    # a layout the lean path does not cover gets the public launcher itself
    assert lean.BINDERS["linear_gelu"]((torch.randn(2, 3, 64), w, b), {}) is K.linear_gelu
