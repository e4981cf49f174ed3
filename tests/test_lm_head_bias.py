"""Which value the LM head's bias gets from a checkpoint storing ``lm_head.bias`` and ``lm_head.decoder.bias`` (one
tied Parameter in the model) with different values, or only one of them: exactly transformers 4.56.2's choice (its
``_tie_weights`` keeps ``decoder.bias``), whatever the file format, key order or shard holding each key. transformers
5.x computes with the same ``decoder.bias`` (its ``lm_head.bias`` stays untied and unused), so the logits agree too."""

import collections
import json

import pytest
import torch
from conftest import tiny_config_kwargs

import xlmrxl

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

BIAS, DECODER = "lm_head.bias", "lm_head.decoder.bias"


def _write(d, head, present, order, fmt, tie_word_embeddings=True):
    kw = tiny_config_kwargs(is_decoder=head == "XLMRobertaXLForCausalLM", tie_word_embeddings=tie_word_embeddings)
    cfg = transformers.XLMRobertaXLConfig(**kw)
    torch.manual_seed(0)
    sd = {k: v.clone().contiguous() for k, v in getattr(transformers, head)(cfg).state_dict().items()}
    rest = {k: v for k, v in sd.items() if k not in (BIAS, DECODER)}
    values = {BIAS: torch.full((cfg.vocab_size,), 1.0), DECODER: torch.linspace(-3, 6, cfg.vocab_size)}
    keys = [k for k in (BIAS, DECODER) if k in present]
    if order == "decoder first":
        keys.reverse()
    ordered = collections.OrderedDict((k, values[k]) for k in keys)
    ordered.update(rest)
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    if fmt == "bin":
        torch.save(ordered, d / "pytorch_model.bin")
    elif fmt == "safetensors":
        save_file(dict(ordered), str(d / "model.safetensors"), metadata={"format": "pt"})
    else:  # sharded: each bias key in its own shard, the first-ordered one in the first shard
        names = list(ordered)
        shards = [names[:1] + names[2:], names[1:2]] if len(keys) == 2 else [names[:1], names[1:]]
        weight_map = {}
        for i, part in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-00002.safetensors"
            save_file({k: ordered[k] for k in part}, str(d / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded"])
@pytest.mark.parametrize("present", [(BIAS, DECODER), (BIAS,), (DECODER,)])
@pytest.mark.parametrize("order", ["bias first", "decoder first"])
@pytest.mark.parametrize("head", ["XLMRobertaXLForMaskedLM", "XLMRobertaXLForCausalLM"])
def test_lm_head_bias_resolution_equals_transformers(tmp_path, fmt, present, order, head):
    d = _write(tmp_path / "ckpt", head, present, order, fmt)
    theirs = getattr(transformers, head).from_pretrained(d).eval()
    ours = getattr(xlmrxl, head).from_pretrained(d, backend="reference")
    # the bias the logits use; 4.56.2 also re-ties lm_head.bias to it (5.x leaves lm_head.bias untied, unused)
    assert torch.equal(ours.lm_head.decoder.bias, theirs.lm_head.decoder.bias)
    if transformers.__version__.startswith("4."):
        assert torch.equal(ours.lm_head.bias, theirs.lm_head.bias)
    assert ours.lm_head.bias is ours.lm_head.decoder.bias  # still one Parameter
    want = 6.0 if DECODER in present else 1.0  # transformers keeps decoder.bias when it is stored
    assert theirs.lm_head.decoder.bias.max().item() == pytest.approx(want)
    ids = torch.tensor([[0, 5, 7, 9, 2]])
    with torch.no_grad():
        a = ours(input_ids=ids).logits
        b = theirs(input_ids=ids).logits
    assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("tie", [True, False])
def test_decoder_weight_resolution_equals_transformers(tmp_path, tie):
    """The other tie of the head: the decoder weight and the word embeddings, stored with different values
    (4.56.2 keeps the embeddings; 5.x keeps the stored decoder weight when tied: not this project's oracle)."""
    if tie and not transformers.__version__.startswith("4."):
        pytest.skip("transformers 5.x resolves the decoder-weight tie the other way; 4.56.2 is the oracle")
    d = _write(tmp_path / "ckpt", "XLMRobertaXLForMaskedLM", (BIAS, DECODER), "bias first", "safetensors", tie)
    from safetensors.torch import load_file

    sd = load_file(str(d / "model.safetensors"))
    sd["lm_head.decoder.weight"] = torch.randn_like(sd["roberta.embeddings.word_embeddings.weight"])
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    theirs = transformers.XLMRobertaXLForMaskedLM.from_pretrained(d).eval()
    ours = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(d, backend="reference")
    assert torch.equal(ours.lm_head.decoder.weight, theirs.lm_head.decoder.weight)
    assert torch.equal(ours.roberta.embeddings.word_embeddings.weight, theirs.roberta.embeddings.word_embeddings.weight)
