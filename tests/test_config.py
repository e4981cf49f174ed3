"""XLMRobertaXLConfig: defaults, validation, (de)serialisation, and config.json interchange with transformers 4.56.2."""

import json

import pytest
import torch
from conftest import tiny_config_kwargs

from xlmrxl import XLMRobertaXLConfig

transformers = pytest.importorskip("transformers")

MODEL_FIELDS = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "position_embedding_type",
    "use_cache",
    "classifier_dropout",
]
COMMON_FIELDS = [
    "is_decoder",
    "add_cross_attention",
    "is_encoder_decoder",
    "tie_word_embeddings",
    "chunk_size_feed_forward",
    "num_labels",
    "id2label",
    "label2id",
    "problem_type",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "architectures",
]


def _theirs(cfg, f):
    """A transformers config field; 5.x dropped ``position_embedding_type`` (its model is always absolute)."""
    return getattr(cfg, f, "absolute") if f == "position_embedding_type" else getattr(cfg, f)


def test_defaults_match_transformers():
    ours, theirs = XLMRobertaXLConfig(), transformers.XLMRobertaXLConfig()
    for f in MODEL_FIELDS + COMMON_FIELDS:
        assert getattr(ours, f) == _theirs(theirs, f), f
    assert ours.model_type == theirs.model_type == "xlm-roberta-xl"
    assert (ours.hidden_size, ours.num_hidden_layers, ours.num_attention_heads) == (2560, 36, 32)


def test_head_divisibility_error():
    with pytest.raises(ValueError, match=r"hidden_size \(70\) must be a multiple of num_attention_heads \(4\)"):
        XLMRobertaXLConfig(hidden_size=70, num_attention_heads=4)


def test_validation_errors():
    with pytest.raises(ValueError, match="problem_type='multi_class'"):
        XLMRobertaXLConfig(problem_type="multi_class")
    with pytest.raises(ValueError, match="position_embedding_type='rotary'"):
        XLMRobertaXLConfig(position_embedding_type="rotary")
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        XLMRobertaXLConfig(attn_implementation="flash")


def test_labels_and_aliases():
    c = XLMRobertaXLConfig(num_labels=5)
    assert c.num_labels == 5 and c.id2label[4] == "LABEL_4" and c.label2id["LABEL_4"] == 4
    c = XLMRobertaXLConfig(id2label={"0": "neg", "1": "pos"})
    assert c.id2label == {0: "neg", 1: "pos"} and c.label2id == {"neg": 0, "pos": 1} and c.num_labels == 2
    c.num_labels = 3
    assert c.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    c = XLMRobertaXLConfig(torch_dtype=torch.bfloat16)
    assert c.dtype == "bfloat16" and c.torch_dtype == "bfloat16"
    assert c.use_return_dict is True


def test_unknown_kwargs_kept_and_round_trip(tmp_path):
    c = XLMRobertaXLConfig(
        **tiny_config_kwargs(),
        output_past=True,
        tokenizer_class="XLMRobertaTokenizer",
        architectures=["XLMRobertaXLForMaskedLM"],
        quantization_config={"quant_method": "x"},
    )
    assert c.output_past is True and c.tokenizer_class == "XLMRobertaTokenizer"
    d = c.to_dict()
    assert d["model_type"] == "xlm-roberta-xl" and d["output_past"] is True
    assert XLMRobertaXLConfig.from_dict(d) == c
    assert XLMRobertaXLConfig.from_dict(json.loads(c.to_json_string())) == c
    path = c.save_pretrained(tmp_path)
    back = XLMRobertaXLConfig.from_pretrained(tmp_path)
    for f in MODEL_FIELDS + COMMON_FIELDS + ["output_past", "tokenizer_class", "quantization_config"]:
        assert getattr(back, f) == getattr(c, f), f
    assert XLMRobertaXLConfig.from_pretrained(path).hidden_size == 64  # the json file itself
    assert XLMRobertaXLConfig.from_pretrained(tmp_path, hidden_size=128).hidden_size == 128  # overrides


def test_our_config_json_loads_in_transformers(tmp_path):
    c = XLMRobertaXLConfig(
        **tiny_config_kwargs(),
        is_decoder=True,
        add_cross_attention=True,
        num_labels=3,
        position_embedding_type="relative_key",
        classifier_dropout=0.2,
        dtype="float16",
        architectures=["XLMRobertaXLForCausalLM"],
        tie_word_embeddings=False,
    )
    c.save_pretrained(tmp_path)
    h = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(h).__name__ == "XLMRobertaXLConfig"
    for f in MODEL_FIELDS + COMMON_FIELDS:
        assert _theirs(h, f) == getattr(c, f), f
    assert h.dtype == torch.float16


def test_transformers_config_json_loads_in_ours(tmp_path):
    h = transformers.XLMRobertaXLConfig(
        **tiny_config_kwargs(), num_labels=4, problem_type="regression", chunk_size_feed_forward=3, output_past=True
    )
    h.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["torch_dtype"] = "bfloat16"  # hub files still use the old key
    raw.pop("dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    c = XLMRobertaXLConfig.from_pretrained(tmp_path)
    for f in MODEL_FIELDS + COMMON_FIELDS:
        assert getattr(c, f) == _theirs(h, f), f
    assert c.dtype == "bfloat16" and c.output_past is True
    assert c.attn_implementation == "sdpa"


def test_missing_config_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config found"):
        XLMRobertaXLConfig.from_pretrained(tmp_path / "nope")
