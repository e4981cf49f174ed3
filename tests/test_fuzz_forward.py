"""Property-based fuzzing (hypothesis, bounded) of the model forward's input validation.

Random shapes, dtypes, mask values, ids out of range, position ids, token type ids and inputs_embeds, alone and in
combination, on a tiny model under ``no_grad``. Every call either returns what the exact path returns on real tokens
(fp32, 1e-5; the exact path's outputs at padded positions are not compared: the packed path's are 0 there) or raises a
ValueError / TypeError / IndexError with a message; never another exception, never a silently different result."""

from __future__ import annotations

import pytest
import torch
from _oracle import random_model
from conftest import tiny_config_kwargs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xlmrxl import XLMRobertaXLConfig
from xlmrxl.fast import routing
from xlmrxl.modeling import XLMRobertaXLForMaskedLM, XLMRobertaXLForSequenceClassification
from xlmrxl.reasons import Reason

CLEAR = (ValueError, TypeError, IndexError)
TOL = 1e-5
_CFG = XLMRobertaXLConfig(
    **tiny_config_kwargs(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37, num_labels=2)
)
V, H, P = _CFG.vocab_size, _CFG.hidden_size, _CFG.max_position_embeddings


@pytest.fixture(scope="module")
def models():
    return {
        "mlm": random_model(XLMRobertaXLForMaskedLM, _CFG, seed=1),
        "cls": random_model(XLMRobertaXLForSequenceClassification, _CFG, seed=2),
    }


@st.composite
def calls(draw):
    """Keyword arguments of one forward call, mostly valid, sometimes wrong in one or several ways."""
    b = draw(st.sampled_from([1, 2, 3] * 6 + [0]))
    s = draw(st.integers(0, 6))
    kw = {}
    form = draw(st.sampled_from(["ids"] * 12 + ["embeds"] * 5 + ["both", "neither"]))
    if form in ("ids", "both"):
        hi = draw(st.sampled_from([V] * 9 + [V + 3]))
        lo = draw(st.sampled_from([0] * 9 + [-2]))
        ids = torch.randint(lo, hi, (b, s)) if hi > lo else torch.zeros(b, s, dtype=torch.long)
        dtype = draw(st.sampled_from([torch.long] * 8 + [torch.int32, torch.float32]))
        shape = draw(st.sampled_from(["ok"] * 18 + ["1d", "3d"]))
        ids = ids.to(dtype)
        kw["input_ids"] = ids.reshape(-1) if shape == "1d" else ids[..., None] if shape == "3d" else ids
    if form in ("embeds", "both"):
        dtype = draw(st.sampled_from([torch.float32] * 6 + [torch.bfloat16, torch.float64, torch.long]))
        width = draw(st.sampled_from([H] * 9 + [H + 1]))
        kw["inputs_embeds"] = torch.randn(b, s, width).to(dtype)
    mask_kind = draw(st.sampled_from(["none"] * 3 + ["binary"] * 12 + ["nonbinary", "shape"]))
    if mask_kind != "none":
        shape = (b, s) if mask_kind != "shape" else draw(st.sampled_from([(b, s + 1), (b + 1, s), (s,), (b, 1, s)]))
        mask = torch.randint(0, 2, shape)
        if mask_kind == "binary" and len(shape) == 2 and shape[1] and draw(st.booleans()):
            mask[:, -1] = 1  # some rows with real tokens
        if mask_kind == "nonbinary" and mask.numel():
            mask.view(-1)[draw(st.integers(0, mask.numel() - 1))] = draw(st.sampled_from([2, -1]))
        mdtype = draw(st.sampled_from([torch.long, torch.bool, torch.float32, torch.int32]))
        if mask_kind == "nonbinary" and draw(st.booleans()):
            mask = mask.float() * 0.5  # 0.5: neither 0 nor 1
        kw["attention_mask"] = mask.to(mdtype) if not (mask_kind == "nonbinary" and mdtype is torch.bool) else mask
    if draw(st.integers(0, 3)) == 0:
        hi = draw(st.sampled_from([P - 2] * 4 + [P + 2]))
        pos = torch.randint(draw(st.sampled_from([2] * 4 + [-1])), hi, (draw(st.sampled_from([b, 1])), s))
        kw["position_ids"] = pos if draw(st.integers(0, 4)) else pos[..., :-1]
    if draw(st.integers(0, 3)) == 0:
        kw["token_type_ids"] = torch.randint(0, draw(st.sampled_from([1] * 4 + [2])), (b, s))
    return kw


class _ForcedExact:
    """Every call in the block takes the exact path (the route says so)."""

    def __enter__(self):
        self.real = routing._common_not_supported

        def forced(encoder, call):
            return [*self.real(encoder, call), Reason("test", "forced by the fuzz test")]

        routing._common_not_supported = forced

    def __exit__(self, *exc):
        routing._common_not_supported = self.real


def _run(model, kw):
    try:
        with torch.no_grad():
            return model(**kw), None
    except CLEAR as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None, exc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kw=calls(), head=st.sampled_from(["mlm", "cls"]))
def test_forward_validates_or_equals_the_exact_path(models, kw, head):
    model = models[head]
    got, err = _run(model, kw)  # any exception other than CLEAR fails the test here
    with _ForcedExact():
        want, want_err = _run(model, kw)
    assert (err is None) == (want_err is None), f"fast path: {err!r}; exact path: {want_err!r}"
    event("result" if err is None else type(err).__name__)
    if err is not None:
        return
    mask = kw.get("attention_mask")
    if head == "mlm":
        real = torch.ones(got.logits.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        assert got.logits.shape == want.logits.shape
        if real.any():
            assert float((got.logits - want.logits)[real].abs().max()) <= TOL
    else:
        # a row's classification reads <s> (position 0): compared where that position is real
        real = torch.ones(got.logits.shape[0], dtype=torch.bool) if mask is None else mask.bool()[:, 0]
        assert got.logits.shape == want.logits.shape
        if real.numel() and real.any():
            assert float((got.logits - want.logits)[real].abs().max()) <= TOL
        if mask is not None and mask.numel() and not mask.bool()[:, 0].all():
            assert torch.equal(got.logits, want.logits), "a left-padded batch must take the exact path"


def test_zero_length_input_to_a_head_reading_position_zero_is_a_clear_error(models):
    """Found by the fuzzing above: a (B, 0) input to a classification head (or a base model with a pooler) raised
    torch's bare IndexError on every path; it is a ValueError saying what to pass. Heads without a position-0 read
    return the exact path's empty output (tests/test_route.py)."""
    ids = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad(), pytest.raises(ValueError, match=r"zero-length sequences.*position 0"):
        models["cls"](ids)
    with torch.no_grad():
        assert models["mlm"](ids).logits.shape == (2, 0, V)


def test_float_ids_and_empty_batches_are_clear_errors(models):
    with torch.no_grad():
        with pytest.raises(TypeError, match=r"input_ids has dtype torch.float32.*\.long\(\)"):
            models["mlm"](torch.ones(2, 3))
        with pytest.raises(ValueError, match="batch size 0"):
            models["mlm"](torch.zeros(0, 3, dtype=torch.long))
