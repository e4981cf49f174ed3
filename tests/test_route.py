"""The route's calls that must not take the fused path, or must give the exact path's answer.

- tracing, export and full-graph compilation: correct for a batch with another padding pattern than the traced one;
- losses that read padded positions (question answering, masked-LM / causal-LM labels on padding) equal transformers';
- accelerate's device-alignment hooks (``_hf_hook``) send the call to the exact path;
- attention masks other than 0 / 1 are refused on every path (ours and an accelerated transformers model);
- zero-length sequences return the exact path's empty output;
- unknown keyword arguments are errors.
"""

import logging
import warnings

import pytest
import torch
from _oracle import FastPathSpy, force_exact, hf_twin, make_inputs, random_model
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import reasons
from xlmrxl.fast import EXACT, PACKED, Call, route
from xlmrxl.reasons import codes

TOL = 1e-5


def _cfg(**kw):
    return xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(**kw))


def _batches(cfg):
    """Two batches with different padding patterns (no fully padded row: every row has real tokens to compare)."""
    a = make_inputs(cfg, batch=3, seq=9, seed=1, fully_padded_row=False)
    b = make_inputs(cfg, batch=3, seq=9, seed=2, fully_padded_row=False)
    assert not torch.equal(a["attention_mask"], b["attention_mask"])
    return a, b


def _real_err(x, y, mask):
    keep = mask.bool()
    return (x - y)[keep].abs().max().item()


# -- tracing, export, full-graph compile -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["jit.trace", "export", "compile_fullgraph"])
def test_graph_capture_is_correct_for_another_padding(how):
    cfg = _cfg()
    m = random_model(xlmrxl.XLMRobertaXLModel, cfg, add_pooling_layer=False)
    a, b = _batches(cfg)
    with torch.no_grad():
        ref = m(**b).last_hidden_state
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python values
            if how == "jit.trace":
                g = torch.jit.trace(m, (a["input_ids"], a["attention_mask"]), strict=False, check_trace=False)
                got = g(b["input_ids"], b["attention_mask"])["last_hidden_state"]
            elif how == "export":
                ep = torch.export.export(m, (a["input_ids"], a["attention_mask"]))
                got = ep.module()(b["input_ids"], b["attention_mask"]).last_hidden_state
            else:
                g = torch.compile(m, fullgraph=True, backend="eager")
                g(**a)
                got = g(**b).last_hidden_state
    err = _real_err(got, ref, b["attention_mask"])
    assert err <= TOL, f"{how}: max err {err:.3g} on a batch padded differently from the captured one"


def test_jit_trace_reason_is_logged(caplog, fresh_log):
    cfg = _cfg()
    m = random_model(xlmrxl.XLMRobertaXLModel, cfg, add_pooling_layer=False)
    a, _ = _batches(cfg)
    with torch.no_grad(), warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        warnings.simplefilter("ignore")
        torch.jit.trace(m, (a["input_ids"], a["attention_mask"]), strict=False, check_trace=False)
    assert any("torch.jit.trace" in r.getMessage() for r in caplog.records)


# -- losses that read padded positions ----------------------------------------------------------------------------
def _loss_case(head, labels_fn, monkeypatch):
    cfg = _cfg(is_decoder=head == "XLMRobertaXLForCausalLM")
    ours = random_model(getattr(xlmrxl, head), cfg)
    inputs = make_inputs(cfg, batch=3, seq=9, seed=4, fully_padded_row=False)
    kw = labels_fn(inputs)
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad():
        got = ours(**inputs, **kw).loss
        theirs = hf_twin(ours)(**inputs, **kw).loss
    return got, theirs, spy


def test_qa_loss_with_padding_equals_transformers(monkeypatch):
    def labels(inputs):
        return {"start_positions": torch.tensor([1, 2, 0]), "end_positions": torch.tensor([3, 4, 8])}

    got, theirs, spy = _loss_case("XLMRobertaXLForQuestionAnswering", labels, monkeypatch)
    assert spy.encoder == 0, "a QA loss over padded positions must take the exact path"
    assert abs(got.item() - theirs.item()) <= TOL, f"QA loss {got.item()} vs transformers {theirs.item()}"


def test_mlm_labels_on_padding_equal_transformers(monkeypatch):
    def labels(inputs):
        return {"labels": inputs["input_ids"].clone()}  # labels everywhere, padded positions included

    got, theirs, spy = _loss_case("XLMRobertaXLForMaskedLM", labels, monkeypatch)
    assert spy.encoder == 0
    assert abs(got.item() - theirs.item()) <= TOL, f"MLM loss {got.item()} vs transformers {theirs.item()}"

    def real_only(inputs):
        return {"labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}

    got, theirs, spy = _loss_case("XLMRobertaXLForMaskedLM", real_only, monkeypatch)
    assert spy.encoder == 1, "labels on real tokens only: the packed path serves the loss"
    assert abs(got.item() - theirs.item()) <= TOL


def test_causal_lm_labels_predicted_from_padding_equal_transformers(monkeypatch):
    def labels(inputs):  # left-padded rows: the first real label is predicted from a pad position
        return {"labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}

    def not_from_padding(inputs):  # the same labels, less those whose predicting position is padding
        mask = inputs["attention_mask"]
        prev_pad = torch.zeros_like(mask, dtype=torch.bool)
        prev_pad[:, 1:] = mask[:, :-1] == 0
        return {"labels": labels(inputs)["labels"].masked_fill(prev_pad, -100)}

    got, theirs, spy = _loss_case("XLMRobertaXLForCausalLM", not_from_padding, monkeypatch)
    assert abs(got.item() - theirs.item()) <= TOL, f"causal-LM loss {got.item()} vs transformers {theirs.item()}"
    if int(pytest.importorskip("transformers").__version__.split(".")[0]) >= 5:
        # a pad predicting the first real token is a query with every key masked (causal + left padding):
        # transformers 5.x computes that row differently from 4.56.2, the reference xlmrxl follows (6e-4 apart)
        pytest.skip("transformers 5.x computes fully masked query rows differently from 4.56.2 (xlmrxl's reference)")
    got, theirs, spy = _loss_case("XLMRobertaXLForCausalLM", labels, monkeypatch)
    assert abs(got.item() - theirs.item()) <= TOL, f"causal-LM loss {got.item()} vs transformers {theirs.item()}"


LOSS_HEADS = ["XLMRobertaXLForQuestionAnswering", "XLMRobertaXLForMaskedLM", "XLMRobertaXLForCausalLM"]


@pytest.mark.parametrize("head", LOSS_HEADS)
def test_accelerated_transformers_losses_over_padding_unchanged(head, monkeypatch):
    """``accelerate(model)`` must not change transformers' own loss where it reads padded positions."""
    pytest.importorskip("transformers")
    cfg = _cfg(is_decoder=head == "XLMRobertaXLForCausalLM")
    hf = hf_twin(random_model(getattr(xlmrxl, head), cfg))
    inputs = make_inputs(cfg, batch=3, seq=9, seed=8, fully_padded_row=False)
    if head == "XLMRobertaXLForQuestionAnswering":
        kw = {"start_positions": torch.tensor([1, 2, 0]), "end_positions": torch.tensor([3, 4, 8])}
    else:
        kw = {"labels": inputs["input_ids"].clone()}
    with torch.no_grad():
        before = hf(**inputs, **kw).loss
        xlmrxl.accelerate(hf, backend="reference")
        spy = FastPathSpy(monkeypatch)
        after = hf(**inputs, **kw).loss
        hf(**inputs)  # without a loss the fused path serves the call
    assert spy.encoder + spy.decoder == 1, "only the call without a loss may take the fused path"
    assert abs(after.item() - before.item()) <= TOL, f"{head}: loss {after.item()} vs {before.item()}"


def test_padded_loss_reason_only_with_padding():
    cfg = _cfg()
    m = random_model(xlmrxl.XLMRobertaXLModel, cfg)
    h = torch.randn(2, 4, 64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        r = route(m.encoder, Call(hidden_states=h, attention_mask=mask, padded_loss="a loss"))
        assert r.path == EXACT and codes(r.reasons) == [reasons.PADDED_LOSS]
        r = route(m.encoder, Call(hidden_states=h, attention_mask=mask, mask_is_full=True, padded_loss="a loss"))
        assert r.path == PACKED


# -- accelerate's device hooks --------------------------------------------------------------------------------------
class AlignDevicesHook:  # the name and the attribute accelerate uses; only their presence matters here
    pass


def test_device_alignment_hooks_take_the_exact_path(monkeypatch, caplog, fresh_log):
    cfg = _cfg()
    m = random_model(xlmrxl.XLMRobertaXLModel, cfg)
    inputs = make_inputs(cfg, seed=5)
    m.encoder.layer[1].attention._hf_hook = AlignDevicesHook()
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        a = m(**inputs).last_hidden_state
    assert spy.encoder == 0
    assert any("AlignDevicesHook" in r.getMessage() for r in caplog.records)
    force_exact(monkeypatch)
    with torch.no_grad():
        b = m(**inputs).last_hidden_state
    assert torch.equal(a, b)


# -- attention mask values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [2, -1, 0.5])
def test_non_binary_mask_is_refused_everywhere(bad):
    cfg = _cfg()
    m = random_model(xlmrxl.XLMRobertaXLForMaskedLM, cfg)
    inputs = make_inputs(cfg, seed=6)
    mask = inputs["attention_mask"].float() if isinstance(bad, float) else inputs["attention_mask"].clone()
    mask[0, 0] = bad
    for ctx in (torch.no_grad(), torch.enable_grad()):  # fused and exact paths alike
        with ctx, pytest.raises(ValueError, match="only 1 .real token. and 0 .padding."):
            m(inputs["input_ids"], attention_mask=mask)
    with torch.no_grad(), pytest.raises(ValueError, match="only 1"):
        m.roberta.forward_packed(inputs["input_ids"], attention_mask=mask)
    pytest.importorskip("transformers")
    hf = xlmrxl.accelerate(hf_twin(m), backend="reference")
    with torch.no_grad(), pytest.raises(ValueError, match="only 1"):
        hf(inputs["input_ids"], attention_mask=mask)


@pytest.mark.parametrize("dtype", [torch.bool, torch.long, torch.float32])
def test_binary_masks_of_any_dtype_are_accepted(dtype):
    cfg = _cfg()
    m = random_model(xlmrxl.XLMRobertaXLModel, cfg, add_pooling_layer=False)
    inputs = make_inputs(cfg, seed=7)
    with torch.no_grad():
        ref = m(**inputs).last_hidden_state
        got = m(inputs["input_ids"], attention_mask=inputs["attention_mask"].to(dtype)).last_hidden_state
    assert _real_err(got, ref, inputs["attention_mask"]) <= TOL


# -- zero-length sequences ----------------------------------------------------------------------------------------
def test_zero_length_sequences_return_the_exact_paths_empty_output(monkeypatch):
    cfg = _cfg()
    m = random_model(xlmrxl.XLMRobertaXLForMaskedLM, cfg)
    ids = torch.zeros(2, 0, dtype=torch.long)
    for mask in (None, torch.zeros(2, 0, dtype=torch.long)):
        with torch.no_grad():
            fused = m(ids, attention_mask=mask).logits
            packed = m.roberta.forward_packed(ids, attention_mask=mask)
        assert fused.shape == (2, 0, cfg.vocab_size)
        assert packed.last_hidden_state.shape == (0, cfg.hidden_size)
    force_exact(monkeypatch)
    with torch.no_grad():
        exact = m(ids).logits
    assert exact.shape == fused.shape and exact.dtype == fused.dtype


# -- keywords -------------------------------------------------------------------------------------------------------
def test_unknown_keywords_are_errors():
    cfg = _cfg(is_decoder=True)
    m = random_model(xlmrxl.XLMRobertaXLForCausalLM, cfg)
    ids = torch.randint(3, 300, (1, 4))
    with torch.no_grad():
        with pytest.raises(TypeError, match="atention_mask"):
            m(ids, atention_mask=torch.ones(1, 4))
        with pytest.raises(TypeError):
            m.lm_head(torch.randn(1, 4, 64), unused=1)
        with pytest.raises(TypeError):
            m.roberta(ids, atention_mask=torch.ones(1, 4))
