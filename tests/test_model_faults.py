"""Issue 18's model items: full-graph compile through ``accelerate``, int4 saves after a forward, ``accelerate``
called twice, clients built on other models (warned and returned unchanged)."""

import warnings

import pytest
import torch
from _oracle import make_inputs, random_model
from conftest import tiny_config_kwargs

import xlmrxl

transformers = pytest.importorskip("transformers")


def _hf_cfg(**kw):
    return transformers.XLMRobertaXLConfig(**tiny_config_kwargs(**kw))


# -- torch.compile(fullgraph=True) of an accelerated transformers model ---------------------------------------------
@pytest.mark.parametrize(
    "head, backend",
    [
        ("XLMRobertaXLModel", "eager"),
        ("XLMRobertaXLForMaskedLM", "eager"),
        ("XLMRobertaXLForSequenceClassification", "eager"),
        ("XLMRobertaXLForMaskedLM", "aot_eager"),
    ],
)
def test_compile_fullgraph_accelerated_gives_transformers_numbers(head, backend):
    cfg = _hf_cfg()
    m = random_model(getattr(transformers, head), cfg)
    seen = make_inputs(cfg, batch=3, seq=9, seed=1, fully_padded_row=False)
    unseen = make_inputs(cfg, batch=3, seq=9, seed=2, fully_padded_row=False)
    assert not torch.equal(seen["attention_mask"], unseen["attention_mask"])
    torch._dynamo.reset()
    with torch.no_grad():
        ref = m(**unseen)[0]
        xlmrxl.accelerate(m, backend="reference")
        g = torch.compile(m, fullgraph=True, backend=backend)
        g(**seen)
        got = g(**unseen)[0]
    where = unseen["attention_mask"].bool() if got.dim() == 3 else torch.ones(got.shape[0], dtype=torch.bool)
    err = (got - ref)[where].abs().max().item()
    assert err <= 1e-5, f"{head} compiled ({backend}): max err {err:.3g} vs transformers on an unseen padding"


def test_compile_fullgraph_accelerated_int4():
    """int4 layers under full-graph compile: the same numbers as the uncompiled int4 model on an unseen padding."""
    cfg = _hf_cfg(hidden_size=128, intermediate_size=256)
    m = random_model(transformers.XLMRobertaXLForMaskedLM, cfg)
    seen = make_inputs(cfg, batch=3, seq=9, seed=1, fully_padded_row=False)
    unseen = make_inputs(cfg, batch=3, seq=9, seed=2, fully_padded_row=False)
    torch._dynamo.reset()
    with torch.no_grad():
        xlmrxl.accelerate(m, quantization="int4")
        ref = m(**unseen).logits
        g = torch.compile(m, fullgraph=True, backend="eager")
        g(**seen)
        got = g(**unseen).logits
    where = unseen["attention_mask"].bool()
    assert (got - ref)[where].abs().max().item() <= 1e-5


# -- int4: save after a forward, accelerate twice -------------------------------------------------------------------
def _int4_hf_model():
    cfg = transformers.XLMRobertaXLConfig(
        **tiny_config_kwargs(hidden_size=256, num_attention_heads=4, intermediate_size=512, num_hidden_layers=2)
    )
    return random_model(transformers.XLMRobertaXLForMaskedLM, cfg), cfg


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_int4_save_after_forward_is_byte_identical(tmp_path):
    m, cfg = _int4_hf_model()
    xlmrxl.accelerate(m, backend="reference", quantization="int4")
    m.save_pretrained(tmp_path / "before")
    inputs = make_inputs(cfg, batch=3, seq=9, seed=3)
    with torch.no_grad():
        m(**inputs)  # fuses q/k/v: their scales / zeros become strided views of the fused tensors
    m.save_pretrained(tmp_path / "after")  # was: "view size is not compatible with input tensor's size and stride"
    before, after = _files(tmp_path / "before"), _files(tmp_path / "after")
    assert before.keys() == after.keys() and "model.safetensors" in before
    for name in before:
        assert before[name] == after[name], f"{name} differs after a forward"
    sd = m.state_dict()
    assert all(v.is_contiguous() for v in sd.values())
    ours = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "after", backend="reference")
    for k, v in ours.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_xlmrxl_int4_save_after_forward_is_byte_identical(tmp_path):
    cfg = xlmrxl.XLMRobertaXLConfig(
        **tiny_config_kwargs(hidden_size=256, num_attention_heads=4, intermediate_size=512, num_hidden_layers=2)
    )
    m = random_model(xlmrxl.XLMRobertaXLForMaskedLM, cfg)
    xlmrxl.quantization.quantize(m)
    m.save_pretrained(tmp_path / "before")
    with torch.no_grad():
        m(**make_inputs(cfg, batch=3, seq=9, seed=3))
    m.save_pretrained(tmp_path / "after")
    assert _files(tmp_path / "before")["model.safetensors"] == _files(tmp_path / "after")["model.safetensors"]


def test_accelerate_int4_twice_is_idempotent():
    m, cfg = _int4_hf_model()
    assert xlmrxl.accelerate(m, backend="reference", quantization="int4") is m
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    assert xlmrxl.accelerate(m, backend="reference", quantization="int4") is m
    assert m.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    ours_cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(hidden_size=128, intermediate_size=256))
    ours = xlmrxl.XLMRobertaXLForMaskedLM(ours_cfg)
    xlmrxl.accelerate(ours, quantization="int4")
    assert xlmrxl.accelerate(ours, quantization="int4") is ours


# -- clients built on another model: warned, returned unchanged ----------------------------------------------------
def _bert():
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    return transformers.BertModel(cfg)


def _fake_client(module: str, build):
    """A minimal stand-in for a client class (recognised by the module its class comes from)."""
    cls = type("FakeClient", (torch.nn.Module,), {"__module__": module})
    obj = cls()
    build(obj)
    return obj


def _assert_unchanged_with_warning(obj, inner):
    forward = inner.encoder.forward
    with pytest.warns(UserWarning, match="left unchanged") as rec:
        assert xlmrxl.accelerate(obj) is obj
    assert type(inner).__name__ in str(rec[0].message)
    assert not xlmrxl.is_accelerated(obj)
    assert "forward" not in inner.encoder.__dict__ and inner.encoder.forward == forward
    assert xlmrxl.deaccelerate(obj) is obj


def test_sentence_transformer_on_bert_is_warned_and_unchanged():
    bert = _bert()

    def build(st):
        st.add_module("0", torch.nn.Module())
        st._modules["0"].auto_model = bert

    _assert_unchanged_with_warning(_fake_client("sentence_transformers.SentenceTransformer", build), bert)


def test_comet_on_xlmr_is_warned_and_unchanged():
    cfg = transformers.XLMRobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    xlmr = transformers.XLMRobertaModel(cfg, add_pooling_layer=False)

    def build(metric):
        metric.encoder = torch.nn.Module()
        metric.encoder.model = xlmr

    _assert_unchanged_with_warning(_fake_client("comet.models.regression", build), xlmr)


def test_client_without_a_model_still_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="no transformers model"):
            xlmrxl.accelerate(_fake_client("sentence_transformers.SentenceTransformer", lambda st: None))
