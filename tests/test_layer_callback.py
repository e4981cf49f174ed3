"""``stack.encoder_forward(..., layer_callback=...)`` (COMET's packed layer mix runs there): the callback sees
hidden state i of transformers' numbering on the packed tokens, in order, equal to ``output_hidden_states``' entries,
with its ``Packing``; fully padded batches call it too; the forward's outputs are unchanged by it."""

import pytest
import torch
from conftest import tiny_config_kwargs

from xlmrxl.config import XLMRobertaXLConfig
from xlmrxl.fast import stack
from xlmrxl.modeling import XLMRobertaXLModel


def _model():
    torch.manual_seed(0)
    cfg = XLMRobertaXLConfig(**tiny_config_kwargs())
    return XLMRobertaXLModel(cfg, add_pooling_layer=False).eval()


@pytest.mark.parametrize("padded", [True, False])
def test_callback_sees_every_hidden_state_packed(padded):
    model = _model()
    ids = torch.randint(3, 300, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    if padded:
        mask[1, 5:] = 0
        mask[2, :3] = 0
    seen = []
    with torch.no_grad():
        emb = model.embeddings(input_ids=ids)
        want = stack.encoder_forward(
            model.encoder, emb, mask, "reference", return_packed=True, output_hidden_states=True
        )
        got = stack.encoder_forward(
            model.encoder,
            emb,
            mask,
            "reference",
            return_packed=True,
            layer_callback=lambda i, x, p: seen.append((i, x.clone(), p)),
        )
    assert [i for i, _, _ in seen] == list(range(len(model.encoder.layer) + 1))
    assert got.hidden_states is None and torch.equal(got.last_hidden_state, want.last_hidden_state)
    for (i, x, p), h in zip(seen, want.hidden_states):
        assert x.shape == h.shape and torch.equal(x, h), f"hidden state {i} differs"
        assert torch.equal(p.cu_seqlens, want.packing.cu_seqlens)


def test_callback_on_a_fully_padded_batch():
    model = _model()
    ids = torch.full((2, 4), 1)
    mask = torch.zeros(2, 4, dtype=torch.long)
    seen = []
    with torch.no_grad():
        emb = model.embeddings(input_ids=ids)
        stack.encoder_forward(
            model.encoder, emb, mask, "reference", layer_callback=lambda i, x, p: seen.append((i, tuple(x.shape)))
        )
    assert seen == [(i, (0, 64)) for i in range(len(model.encoder.layer) + 1)]
