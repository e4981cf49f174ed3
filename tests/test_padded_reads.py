"""What a head reads at padded positions: the packed path never computes padded positions (hidden states
and masked-LM logits there are 0), so a head whose output is computed from one — sequence classification and
multiple choice read position 0 (``<s>``), which is padding in a left-padded row — sends the call to the exact path
with a logged reason and equals transformers 4.56.2 (fp32, 1e-5); outputs at padded positions (hidden states, token
logits, the base model's ``pooler_output`` of a row whose position 0 is padding) are not transformers' and nothing
reads them (token classification's loss skips them), so those calls stay on the packed path. The masked-LM head computes
its vocabulary-wide projection on real tokens only. Ours and ``xlmrxl.accelerate``-d transformers models alike."""

from __future__ import annotations

import logging

import pytest
import torch
from _oracle import FastPathSpy, hf_twin, left_padded, max_err, random_model
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import XLMRobertaXLConfig
from xlmrxl.modeling import (
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForMultipleChoice,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForTokenClassification,
    XLMRobertaXLModel,
)

pytest.importorskip("transformers")
TOL = 1e-5


def _cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(num_hidden_layers=2, num_labels=3, **kw))


def _batch(config, left: bool, seed: int = 3):
    ids, mask = left_padded(config, [7, 4, 2], 7, seed=seed)
    if not left:  # the same rows right-padded
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            ids[r] = torch.cat([ids[r, -n:], ids[r, :-n]]) if n < ids.shape[1] else ids[r]
            mask[r] = torch.cat([mask[r, -n:], mask[r, :-n]]) if n < ids.shape[1] else mask[r]
    return ids, mask


def _models(cls, accelerated: bool, **kw):
    ours = random_model(cls, _cfg(), seed=5, **kw)
    theirs = hf_twin(ours)
    if accelerated:  # the transformers model is the one under test, its twin the oracle
        oracle = hf_twin(ours)
        return xlmrxl.accelerate(theirs, backend="reference"), oracle
    return ours, theirs


def _exact_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "exact (unfused) path" in r.getMessage()]


@pytest.mark.parametrize("accelerated", [False, True], ids=["ours", "accelerated"])
@pytest.mark.parametrize(
    "cls,reader",
    [
        (XLMRobertaXLForSequenceClassification, "classification head"),
        (XLMRobertaXLForMultipleChoice, "classification head"),
    ],
    ids=["seq-cls", "multiple-choice"],
)
def test_heads_reading_position_zero_of_a_left_padded_batch(cls, reader, accelerated, monkeypatch, caplog, fresh_log):
    model, oracle = _models(cls, accelerated)
    ids, mask = _batch(model.config, left=True)
    if cls is XLMRobertaXLForMultipleChoice:
        ids, mask = ids.view(1, 3, -1), mask.view(1, 3, -1)
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        got, want = model(ids, attention_mask=mask), oracle(ids, attention_mask=mask)
    key = "logits"
    err = max_err(got[key], want[key])
    assert err <= TOL, f"{key} of a left-padded batch {err:.3g} from transformers"
    assert spy.encoder == 0, "a left-padded batch whose position 0 is read must take the exact path"
    lines = _exact_lines(caplog)
    assert any(f"{reader} reads position 0" in line for line in lines), lines
    # the same rows right-padded: position 0 is real everywhere, the packed path serves it and equals transformers
    ids, mask = _batch(model.config, left=False)
    if cls is XLMRobertaXLForMultipleChoice:
        ids, mask = ids.view(1, 3, -1), mask.view(1, 3, -1)
    with torch.no_grad():
        got, want = model(ids, attention_mask=mask), oracle(ids, attention_mask=mask)
    assert spy.encoder == 1, "a right-padded batch takes the packed path"
    assert max_err(got[key], want[key]) <= TOL


@pytest.mark.parametrize("accelerated", [False, True], ids=["ours", "accelerated"])
def test_base_model_pooler_of_a_left_padded_row_is_a_padded_position(accelerated, monkeypatch):
    """``XLMRobertaXLModel``'s ``pooler_output`` is the pooler applied to position 0: for a row whose position 0 is
    padding it is a function of a padded position, which the packed path does not compute (as ``last_hidden_state``
    there). The base model stays on the packed path (serving embeddings with left padding stays fast); its
    ``pooler_output`` equals transformers' on the rows whose position 0 is real."""
    model, oracle = _models(XLMRobertaXLModel, accelerated)
    ids, mask = _batch(model.config, left=True)
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad():
        got, want = model(ids, attention_mask=mask), oracle(ids, attention_mask=mask)
    assert spy.encoder == 1
    first_real = mask[:, 0].bool()
    assert not first_real.all() and first_real.any()
    assert max_err(got.pooler_output, want.pooler_output, first_real) <= TOL
    assert max_err(got.last_hidden_state, want.last_hidden_state, mask.bool()) <= TOL


@pytest.mark.parametrize("accelerated", [False, True], ids=["ours", "accelerated"])
def test_token_classification_padded_positions_are_not_read(accelerated, monkeypatch):
    """Token classification's logits at padded positions are not transformers' (the packed path's hidden states
    there are 0) and nothing reads them: its loss keeps only positions where attention_mask == 1, so it equals
    transformers' with any labels at pads; the logits equal on real tokens; the packed path runs."""
    model, oracle = _models(XLMRobertaXLForTokenClassification, accelerated)
    ids, mask = _batch(model.config, left=True)
    labels = torch.randint(0, 3, ids.shape)
    labels[mask == 0] = -100  # labels on padding would send the call to the exact path (see test_route.py)
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, labels=labels)
        want = oracle(ids, attention_mask=mask, labels=labels)
    assert spy.encoder == 1
    assert max_err(got.logits, want.logits, mask.bool()) <= TOL
    assert abs(got.loss.item() - want.loss.item()) <= TOL


@pytest.mark.parametrize("accelerated", [False, True], ids=["ours", "accelerated"])
def test_masked_lm_head_runs_on_real_tokens_only(accelerated, monkeypatch):
    """The packed path's MLM head projects the real rows only (rows counted at the decoder Linear), logits equal
    transformers' on real tokens and are 0 at padded positions; the exact path (forced) still projects every row."""
    model, oracle = _models(XLMRobertaXLForMaskedLM, accelerated)
    ids, mask = _batch(model.config, left=True)
    rows = []
    hook = model.lm_head.decoder.register_forward_hook(lambda m, a, o: rows.append(a[0].reshape(-1, a[0].shape[-1])))
    spy = FastPathSpy(monkeypatch)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, labels=labels)
        want = oracle(ids, attention_mask=mask, labels=labels)
    hook.remove()
    assert spy.encoder == 1
    assert [r.shape[0] for r in rows] == [int(mask.sum())], "the vocabulary projection ran on padded rows"
    assert got.logits.shape == want.logits.shape
    assert max_err(got.logits, want.logits, mask.bool()) <= TOL
    assert float(got.logits[mask == 0].abs().max()) == 0.0
    assert abs(got.loss.item() - want.loss.item()) <= TOL
    # a model call without a head around it (the backbone, then lm_head by hand) projects every row it is given
    with torch.no_grad():
        base = model.roberta(ids, attention_mask=mask).last_hidden_state
        assert model.lm_head(base).shape == (*ids.shape, model.config.vocab_size)
    if accelerated:
        xlmrxl.deaccelerate(model)
        assert "forward" not in model.lm_head.__dict__


def test_inputs_embeds_of_another_dtype():
    """float64 inputs_embeds for an fp32 model is an error naming both dtypes and the fix (transformers raises a
    bare 'mixed dtype'); lower-precision embeddings are promoted as in transformers."""
    model = random_model(XLMRobertaXLModel, _cfg(), seed=1)
    oracle = hf_twin(model)
    e = torch.randn(2, 5, model.config.hidden_size)
    with pytest.raises(TypeError, match=r"inputs_embeds has dtype torch.float64 .* torch.float32.*\.to\("):
        model(inputs_embeds=e.double())
    with pytest.raises(TypeError, match="inputs_embeds has dtype torch.int64"):
        model(inputs_embeds=e.long())
    with torch.no_grad():
        got = model(inputs_embeds=e.bfloat16()).last_hidden_state
        want = oracle(inputs_embeds=e.bfloat16()).last_hidden_state
    assert got.dtype == want.dtype == torch.float32 and max_err(got, want) <= TOL
    model.double()
    with torch.no_grad():
        assert model(inputs_embeds=e.double()).last_hidden_state.dtype == torch.float64
