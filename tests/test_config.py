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


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("num_hidden_layers", -1, r"num_hidden_layers=-1 \(int\) is not allowed: it must be an integer >= 1"),
        ("layer_norm_eps", -1, r"layer_norm_eps=-1 is not allowed: it must be a number in \(0, 1\]"),
        ("layer_norm_eps", float("nan"), r"layer_norm_eps=nan is not allowed"),
        ("hidden_size", "64", r"hidden_size='64' \(str\) is not allowed: it must be an integer >= 1"),
        ("hidden_size", 64.0, r"hidden_size=64\.0 \(float\) is not allowed"),
        ("hidden_size", -64, r"hidden_size=-64 \(int\) is not allowed"),
        ("hidden_size", 70, r"hidden_size \(70\) must be a multiple of num_attention_heads \(4\)"),
        ("num_attention_heads", 0, r"num_attention_heads=0 \(int\) is not allowed"),
        ("vocab_size", 0, r"vocab_size=0 \(int\) is not allowed"),
        ("pad_token_id", 300, r"pad_token_id=300 \(int\) is not allowed: it must be an integer in \[0, 299\]"),
        ("eos_token_id", -2, r"eos_token_id=-2"),
        ("hidden_dropout_prob", 1.5, r"hidden_dropout_prob=1\.5 is not allowed: it must be a number in \[0, 1\]"),
        ("is_decoder", "yes", r"is_decoder='yes' must be true or false"),
        ("hidden_act", "gelu_fast", r"hidden_act='gelu_fast' is not supported"),
        ("dtype", "int8", r"dtype='int8' is not a dtype"),
        ("num_labels", 0, r"num_labels=0 \(int\) is not allowed"),
        ("id2label", {"a": "x"}, r"id2label=\{'a': 'x'\} .* are not label maps"),
        ("architectures", "XLMRobertaXLModel", r"architectures='XLMRobertaXLModel' must be a list"),
        ("to_dict", 1, r"config key 'to_dict' cannot be set"),
    ],
)
def test_every_field_is_validated_on_construction_and_load(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        XLMRobertaXLConfig(**dict(tiny_config_kwargs(), **{field: value}))
    raw = dict(tiny_config_kwargs(), **{field: value})
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"config\.json.*" + match):
        XLMRobertaXLConfig.from_pretrained(tmp_path)


def test_config_json_that_is_not_an_object(tmp_path):
    for content, what in (("[1, 2]", "list"), ('"text"', "str"), ("3", "int")):
        (tmp_path / "config.json").write_text(content)
        with pytest.raises(ValueError, match=rf"holds a JSON {what}, not an object of config fields"):
            XLMRobertaXLConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{" * 100_000)
    with pytest.raises(ValueError, match=r"is not valid JSON"):
        XLMRobertaXLConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"a config must be a JSON object"):
        XLMRobertaXLConfig.from_dict([1, 2])
    with open(tmp_path / "config.json", "wb") as fh:  # sparse: costs no disk, and is never read whole
        fh.truncate(65 << 20)
    with pytest.raises(ValueError, match=r"far too big for a model config"):
        XLMRobertaXLConfig.from_pretrained(tmp_path)


def test_overrides_are_validated_when_loading_a_model(tmp_path):
    import xlmrxl

    model = xlmrxl.XLMRobertaXLModel(XLMRobertaXLConfig(**tiny_config_kwargs()))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"layer_norm_eps=-1"):
        xlmrxl.XLMRobertaXLModel.from_pretrained(tmp_path, layer_norm_eps=-1)
    with pytest.raises(ValueError, match=r"hidden_size \(64\) must be a multiple of num_attention_heads \(5\)"):
        xlmrxl.XLMRobertaXLModel.from_pretrained(tmp_path, num_attention_heads=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        tiny_config_kwargs(),
        dict(tiny_config_kwargs(), num_labels=1, problem_type="regression", classifier_dropout=0.0),
        dict(tiny_config_kwargs(), is_decoder=True, eos_token_id=2, torch_dtype=torch.bfloat16),
        dict(tiny_config_kwargs(), num_labels=5, hidden_act="gelu_new", output_past=True),
    ],
)
def test_configs_transformers_writes_load(tmp_path, kwargs):
    """Whatever transformers 4.56.2 writes for this model type passes the validation unchanged."""
    transformers.XLMRobertaXLConfig(**kwargs).save_pretrained(tmp_path)
    ours = XLMRobertaXLConfig.from_pretrained(tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    for f in MODEL_FIELDS + COMMON_FIELDS:
        assert getattr(ours, f) == _theirs(theirs, f), f
