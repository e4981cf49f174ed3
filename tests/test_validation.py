"""The backbone's input validation (``xlmrxl.modeling.validation``): errors that name the bad value and the fix, and
every data-dependent check read back in one host sync per forward."""

import pytest
import torch
from _oracle import make_inputs, random_model
from conftest import tiny_config_kwargs

from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLForMaskedLM


def cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(**kw))


def build(cls, config, seed=0, **kw):
    return random_model(cls, config, seed, **kw)


def test_error_messages():
    config = cfg()
    m = XLMRobertaXLForMaskedLM(config).eval()
    ids = torch.full((2, 70), 5)
    ids[0, 60:] = config.pad_token_id
    with pytest.raises(ValueError, match=r"row 1 has 70 real \(non-pad\) tokens .* at most 64 .*truncate"):
        m(ids)
    ok = torch.randint(2, 300, (2, 5))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, type_vocab_size=1\); got a value 1"):
        m(ok, token_type_ids=torch.ones_like(ok))
    bad = ok.clone()
    bad[1, 2] = 300
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=300\); got values from \d+ to 300"):
        m(bad)
    bad[1, 2] = -1
    with pytest.raises(ValueError, match="vocab_size=300"):
        m(bad)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\) but must be \(2, 5\)"):
        m(ok, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="not both"):
        m(ok, inputs_embeds=torch.randn(2, 5, 64))
    with pytest.raises(ValueError, match="neither was given"):
        m()
    with pytest.raises(ValueError, match=r"inputs_embeds has 70 positions .* at most 64"):
        m(inputs_embeds=torch.randn(1, 70, 64))
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, max_position_embeddings=66\)"):
        m(ok, position_ids=torch.full_like(ok, 66))
    # exactly at the limit is fine
    m(torch.randint(2, 300, (1, 64)))


def test_one_device_sync_per_forward(monkeypatch):
    """All data-dependent checks (and the mask's all-ones test) share one host read-back."""
    config = cfg()
    m = build(XLMRobertaXLForMaskedLM, config)
    inputs = make_inputs(config)
    calls = []
    for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    m(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]))
    m(**inputs, output_attentions=True)
    monkeypatch.undo()
    assert calls == ["tolist", "tolist"], calls
