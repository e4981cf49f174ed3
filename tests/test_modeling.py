"""Model classes vs transformers 4.56.2 (the oracle, tests/_oracle.py) on the tiny config, CPU.

Parity is on real tokens only (attention_mask == 1): fp32 max abs diff ≤ 1e-5; fp16/bf16 error vs the fp32 truth ≤ 2×
transformers' own. These tests run with autograd recording (parameters require grad), which keeps the encoder on the
exact path; ``test_default_inference_path_matches`` covers the default no-grad inference call.
"""

import pytest
import torch
from _oracle import assert_lowp, hf_twin, make_inputs, max_err, random_model, real
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import (
    XLMRobertaXLConfig,
    XLMRobertaXLForCausalLM,
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForMultipleChoice,
    XLMRobertaXLForQuestionAnswering,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForTokenClassification,
    XLMRobertaXLModel,
)
from xlmrxl.backend import Backend

transformers = pytest.importorskip("transformers")
# transformers 5.x (the GPU machine's) dropped head_mask, relative positions and sdpa's eager fallback for
# output_attentions, and appends an empty cross_attentions to tuples; the tests of those 4.56.2 behaviours skip there
TF5 = int(transformers.__version__.split(".")[0]) >= 5

TOL = 1e-5
HEADS = [
    XLMRobertaXLModel,
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForTokenClassification,
    XLMRobertaXLForQuestionAnswering,
    XLMRobertaXLForMultipleChoice,
    XLMRobertaXLForCausalLM,
]


def cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(**kw))


def build(cls, config, seed=0, **kw):
    """A model with every parameter random (LayerNorms and biases too, so parity covers them), in eval mode."""
    return random_model(cls, config, seed, **kw)


def outputs_of(out):
    """The tensors to compare per head, with how to mask them: 'tok' (B, S, ...) or 'row' (B, ...)."""
    keys = {
        "last_hidden_state": "tok",
        "pooler_output": "row",
        "logits": None,
        "start_logits": "tok",
        "end_logits": "tok",
    }
    return {k: (getattr(out, k), kind) for k, kind in keys.items() if getattr(out, k, None) is not None}


def compare(ours, theirs, inputs, tol=TOL, seq_level_rows=None):
    tok = real(inputs)
    row = tok[:, 0] if seq_level_rows is None else seq_level_rows
    for name, (a, kind) in outputs_of(ours).items():
        b = getattr(theirs, name)
        assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        if kind is None:
            kind = "tok" if a.dim() == 3 else "row"
        where = tok if kind == "tok" else row
        err = max_err(a, b, where)
        assert err <= tol, f"{name}: max abs diff {err:.3g} > {tol}"


def _strip_empty(t):
    """transformers 5.x appends an empty cross_attentions tuple to an encoder's tuple output; 4.56.2 does not."""
    if TF5:
        while t and isinstance(t[-1], tuple) and not t[-1]:
            t = t[:-1]
    return t


def run_pair(cls, config, inputs, **kw):
    m = build(cls, config)
    h = hf_twin(m)
    return m, h, m(**inputs, **kw), h(**inputs, **kw)


def mc_inputs(config, batch=2, choices=3, seq=7, seed=1):
    flat = make_inputs(config, batch=batch * choices, seq=seq, fully_padded_row=False, left_pad=False, seed=seed)
    return {k: v.view(batch, choices, seq) for k, v in flat.items()}


# -- structure ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_state_dict_and_parameters_match_transformers(cls):
    config = cfg(is_decoder=cls is XLMRobertaXLForCausalLM)
    m = build(cls, config)
    h = hf_twin(m)  # loads strictly: same keys and shapes
    if TF5:  # 5.x registers the embeddings in another order; we keep 4.56.2's
        assert sorted(m.state_dict()) == sorted(h.state_dict())
    else:
        assert list(m.state_dict()) == list(h.state_dict())
    assert m.num_parameters() == h.num_parameters()
    assert m.num_parameters(exclude_embeddings=True) == h.num_parameters(exclude_embeddings=True)
    assert list(m.buffers()) == []
    assert m.base_model_prefix == "roberta" and m.config_class is XLMRobertaXLConfig


@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_forward_signature_matches_transformers(cls):
    """transformers' forward parameters, in its order (positional calls work the same); extras only at the end."""
    import inspect

    if TF5:
        pytest.skip("our forward mirrors transformers 4.56.2's signature (5.x dropped head_mask and others)")

    ours = list(inspect.signature(cls.forward).parameters)
    theirs = [p for p in inspect.signature(getattr(transformers, cls.__name__).forward).parameters if p != "kwargs"]
    assert ours[: len(theirs)] == theirs


def test_meta_construction_and_xl_size():
    with torch.device("meta"):
        m = XLMRobertaXLForMaskedLM(XLMRobertaXLConfig())
    assert m.num_parameters() == 3_482_741_760
    assert all(p.is_meta for p in m.parameters()) and list(m.buffers()) == []
    assert m.device.type == "meta" and m.dtype == torch.float32


def test_init_and_tying():
    torch.manual_seed(0)
    config = cfg(initializer_range=0.05)
    m = XLMRobertaXLForMaskedLM(config)
    emb = m.roberta.embeddings
    assert torch.all(emb.word_embeddings.weight[config.pad_token_id] == 0)
    assert torch.all(emb.position_embeddings.weight[config.pad_token_id] == 0)
    std = m.roberta.encoder.layer[0].attention.self.query.weight.std().item()
    assert abs(std - 0.05) < 0.01, f"init std {std}"
    ln = m.roberta.encoder.LayerNorm
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0) and torch.all(m.lm_head.bias == 0)
    assert m.lm_head.decoder.weight is emb.word_embeddings.weight
    assert m.lm_head.decoder.bias is m.lm_head.bias
    assert m._tied_weights_keys == {
        "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias",
    }
    assert m.get_output_embeddings() is m.lm_head.decoder and m.get_input_embeddings() is emb.word_embeddings
    # tie_word_embeddings=False: the weight is separate, the bias stays shared (transformers 4.56.2)
    u = XLMRobertaXLForMaskedLM(cfg(tie_word_embeddings=False)).eval()
    assert u.lm_head.decoder.weight is not u.roberta.embeddings.word_embeddings.weight
    assert u.lm_head.decoder.bias is u.lm_head.bias
    assert u.tied_weights_map() == {"lm_head.decoder.bias": "lm_head.bias"}
    h = hf_twin(u)
    inputs = make_inputs(u.config)
    assert max_err(u(**inputs).logits, h(**inputs).logits, real(inputs)) <= TOL


def test_accepts_transformers_config_and_dict():
    hc = transformers.XLMRobertaXLConfig(**tiny_config_kwargs())
    assert XLMRobertaXLModel(hc).config.hidden_size == 64
    assert XLMRobertaXLModel(hc.to_dict()).config.num_hidden_layers == 3


def test_backend_attribute_and_set_backend():
    m = XLMRobertaXLForMaskedLM(cfg())
    assert isinstance(m.backend, Backend)
    assert m.roberta.encoder.backend is m.backend and m.roberta.backend is m.backend
    m.set_backend("reference")
    assert m.backend.name == "reference" and m.roberta.encoder.backend is m.backend
    with pytest.raises(ValueError, match="unknown backend"):
        m.set_backend("cuda-magic")


# -- parity per head ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_fp32_parity_every_head(cls):
    config = cfg(
        is_decoder=cls is XLMRobertaXLForCausalLM, num_labels=2 if cls is XLMRobertaXLForQuestionAnswering else 3
    )
    if cls is XLMRobertaXLForMultipleChoice:
        inputs = mc_inputs(config)
        m, h, a, b = run_pair(cls, config, inputs)
        assert a.logits.shape == (2, 3)
        assert max_err(a.logits, b.logits) <= TOL
        return
    inputs = make_inputs(config, left_pad=False)
    m, h, a, b = run_pair(cls, config, inputs)
    compare(a, b, inputs)


def test_default_inference_path_matches():
    """The default call (eval, no grad): whichever path the encoder takes, real tokens match the oracle."""
    config = cfg()
    m = build(XLMRobertaXLForMaskedLM, config)
    h = hf_twin(m)
    inputs = make_inputs(config, batch=4, seed=3)
    with torch.no_grad():
        a, b = m(**inputs, output_hidden_states=True), h(**inputs, output_hidden_states=True)
    assert max_err(a.logits, b.logits, real(inputs)) <= TOL
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        assert max_err(x, y, real(inputs)) <= TOL, f"hidden_states[{i}]"
    assert torch.isfinite(a.logits).all()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hidden_states_attentions_and_tuples(impl):
    if TF5 and impl == "sdpa":
        pytest.skip("transformers 5.x's sdpa returns no attention weights (4.56.2 falls back to eager, as we do)")
    config = cfg(attn_implementation=impl)
    inputs = make_inputs(config, batch=4, seed=2)
    m, h, a, b = run_pair(XLMRobertaXLModel, config, inputs, output_hidden_states=True, output_attentions=True)
    tok = real(inputs)
    assert len(a.hidden_states) == len(b.hidden_states) == config.num_hidden_layers + 1
    assert len(a.attentions) == len(b.attentions) == config.num_hidden_layers
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        assert max_err(x, y, tok) <= TOL, f"hidden_states[{i}]"
    assert max_err(a.hidden_states[-1], a.last_hidden_state) == 0.0
    for i, (x, y) in enumerate(zip(a.attentions, b.attentions)):
        assert x.shape == y.shape == (4, 4, 9, 9)
        assert max_err(x, y, tok[:, None, :, None].expand_as(x)) <= TOL, f"attentions[{i}]"
    # return_dict=False: same tuple layout as transformers
    ta = m(**inputs, output_hidden_states=True, output_attentions=True, return_dict=False)
    tb = _strip_empty(h(**inputs, output_hidden_states=True, output_attentions=True, return_dict=False))
    assert len(ta) == len(tb) == 4
    assert max_err(ta[0], tb[0], tok) <= TOL and max_err(ta[1], tb[1], tok[:, 0]) <= TOL
    assert isinstance(ta[2], tuple) and len(ta[2]) == len(tb[2]) and len(ta[3]) == len(tb[3])


@pytest.mark.parametrize(
    "cls",
    [
        XLMRobertaXLForMaskedLM,
        XLMRobertaXLForSequenceClassification,
        XLMRobertaXLForTokenClassification,
        XLMRobertaXLForQuestionAnswering,
        XLMRobertaXLForMultipleChoice,
        XLMRobertaXLModel,
    ],
    ids=lambda c: c.__name__,
)
def test_return_dict_false_tuples(cls):
    # 5.x's sdpa returns no attention weights (4.56.2 falls back to eager): ask 5.x for eager so both give them
    config = cfg(num_labels=2, **({"attn_implementation": "eager"} if TF5 else {}))
    inputs = mc_inputs(config) if cls is XLMRobertaXLForMultipleChoice else make_inputs(config, left_pad=False)
    m = build(cls, config)
    h = hf_twin(m)
    for kw in ({}, {"output_hidden_states": True}, {"output_attentions": True, "output_hidden_states": True}):
        ta, tb = m(**inputs, return_dict=False, **kw), _strip_empty(h(**inputs, return_dict=False, **kw))
        assert isinstance(ta, tuple) and len(ta) == len(tb), f"{kw}: {len(ta)} vs {len(tb)}"
        for x, y in zip(ta, tb):
            assert type(x) is type(y)
        assert (
            max_err(
                ta[0],
                tb[0],
                None
                if ta[0].dim() < 3 and cls is XLMRobertaXLForMultipleChoice
                else (
                    real(inputs)
                    if ta[0].dim() >= 2 and ta[0].shape[:2] == inputs["input_ids"].shape
                    else real(inputs)[:, 0]
                ),
            )
            <= TOL
        )


# -- losses ---------------------------------------------------------------------------------------------------------
def test_masked_lm_loss():
    config = cfg()
    inputs = make_inputs(config, left_pad=False)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, config.vocab_size, inputs["input_ids"].shape, generator=g)
    labels[~real(inputs)] = -100
    labels[0, :3] = -100
    m, h, a, b = run_pair(XLMRobertaXLForMaskedLM, config, inputs, labels=labels)
    assert a.loss.shape == () and abs(a.loss.item() - b.loss.item()) <= TOL
    ta = m(**inputs, labels=labels, return_dict=False)
    assert len(ta) == 2 and abs(ta[0].item() - b.loss.item()) <= TOL


@pytest.mark.parametrize(
    "num_labels,kind,expected",
    [
        (1, "float", "regression"),
        (3, "long", "single_label_classification"),
        (3, "multi", "multi_label_classification"),
    ],
)
def test_sequence_classification_problem_type_inference(num_labels, kind, expected):
    config = cfg(num_labels=num_labels)
    inputs = make_inputs(config, fully_padded_row=False, left_pad=False)
    g = torch.Generator().manual_seed(7)
    if kind == "float":
        labels = torch.randn(3, generator=g)
    elif kind == "multi":
        labels = (torch.rand(3, num_labels, generator=g) > 0.5).float()
    else:
        labels = torch.randint(0, num_labels, (3,), generator=g)
    m, h, a, b = run_pair(XLMRobertaXLForSequenceClassification, config, inputs, labels=labels)
    assert m.config.problem_type == h.config.problem_type == expected
    assert abs(a.loss.item() - b.loss.item()) <= TOL, f"{expected}: {a.loss.item()} vs {b.loss.item()}"


def test_regression_with_several_labels_and_explicit_problem_type():
    config = cfg(num_labels=2, problem_type="regression")
    inputs = make_inputs(config, fully_padded_row=False, left_pad=False)
    labels = torch.randn(3, 2)
    m, h, a, b = run_pair(XLMRobertaXLForSequenceClassification, config, inputs, labels=labels)
    assert abs(a.loss.item() - b.loss.item()) <= TOL


def test_token_classification_loss_ignores_padding():
    config = cfg(num_labels=4)
    inputs = make_inputs(config, batch=4, seed=4)
    labels = torch.randint(0, 4, inputs["input_ids"].shape)
    m, h, a, b = run_pair(XLMRobertaXLForTokenClassification, config, inputs, labels=labels)
    assert abs(a.loss.item() - b.loss.item()) <= TOL
    labels2 = labels.clone()
    labels2[~real(inputs)] = 0  # labels at padding must not matter
    assert abs(m(**inputs, labels=labels2).loss.item() - a.loss.item()) <= TOL
    no_mask = {"input_ids": inputs["input_ids"][:1, :]}
    assert abs(m(**no_mask, labels=labels[:1]).loss.item() - h(**no_mask, labels=labels[:1]).loss.item()) <= TOL


def test_question_answering_loss_clamps_positions():
    config = cfg()
    inputs = make_inputs(config, left_pad=False)
    start = torch.tensor([1, 4, 50])  # 50 is outside the sequence: clamped to S and ignored
    end = torch.tensor([[3], [5], [2]])  # 2D positions are squeezed
    m, h, a, b = run_pair(XLMRobertaXLForQuestionAnswering, config, inputs, start_positions=start, end_positions=end)
    assert abs(a.loss.item() - b.loss.item()) <= TOL
    assert a.start_logits.shape == a.end_logits.shape == (3, 9)


def test_multiple_choice_loss():
    config = cfg()
    inputs = mc_inputs(config)
    labels = torch.tensor([2, 0])
    m, h, a, b = run_pair(XLMRobertaXLForMultipleChoice, config, inputs, labels=labels)
    assert abs(a.loss.item() - b.loss.item()) <= TOL


# -- features -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pe", ["relative_key", "relative_key_query"])
def test_relative_position_embeddings(pe):
    if TF5:
        pytest.skip("transformers 5.x has no relative positions (the model is always absolute)")
    config = cfg(position_embedding_type=pe)
    m = build(XLMRobertaXLForMaskedLM, config)
    assert "roberta.encoder.layer.0.attention.self.distance_embedding.weight" in m.state_dict()
    h = hf_twin(m)
    inputs = make_inputs(config, batch=4)
    a, b = m(**inputs, output_attentions=True), h(**inputs, output_attentions=True)
    assert max_err(a.logits, b.logits, real(inputs)) <= TOL
    a, b = m(**inputs), h(**inputs)
    assert max_err(a.logits, b.logits, real(inputs)) <= TOL


@pytest.mark.parametrize("shape", ["H", "LH"])
def test_head_mask(shape):
    if TF5:
        pytest.skip("transformers 5.x has no head_mask")
    config = cfg()
    inputs = make_inputs(config)
    if shape == "H":
        head_mask = torch.tensor([1.0, 0.0, 1.0, 0.5])
    else:
        head_mask = torch.rand(config.num_hidden_layers, config.num_attention_heads)
        head_mask[1, 2] = 0.0
    m, h, a, b = run_pair(XLMRobertaXLModel, config, inputs, head_mask=head_mask, output_attentions=True)
    assert max_err(a.last_hidden_state, b.last_hidden_state, real(inputs)) <= TOL
    plain = m(**inputs).last_hidden_state
    assert max_err(a.last_hidden_state, plain, real(inputs)) > 1e-4  # the mask does something
    if shape == "H":
        assert torch.all(a.attentions[0][:, 1] == 0)


def test_inputs_embeds_and_position_ids():
    config = cfg()
    m = build(XLMRobertaXLForMaskedLM, config)
    h = hf_twin(m)
    inputs = make_inputs(config, pad=False)
    embeds = torch.randn(3, 9, 64)
    a, b = m(inputs_embeds=embeds), h(inputs_embeds=embeds)
    assert max_err(a.logits, b.logits) <= TOL
    pos = torch.arange(9).expand(3, 9)  # explicit ids are used as given (no +2 offset)
    a, b = m(**inputs, position_ids=pos), h(**inputs, position_ids=pos)
    assert max_err(a.logits, b.logits) <= TOL
    assert max_err(a.logits, m(**inputs).logits) > 1e-4
    # inputs_embeds equal to the word embeddings reproduce the ids path where nothing is padded
    emb = m.roberta.embeddings.word_embeddings(inputs["input_ids"])
    assert max_err(m(inputs_embeds=emb).logits, m(**inputs).logits) <= TOL


def test_token_type_ids():
    config = cfg(type_vocab_size=3)
    inputs = make_inputs(config, token_type_ids=True, left_pad=False)
    m, h, a, b = run_pair(XLMRobertaXLModel, config, inputs)
    compare(a, b, inputs)


def test_chunked_feed_forward():
    config = cfg(chunk_size_feed_forward=3)
    inputs = make_inputs(config, left_pad=False)
    m, h, a, b = run_pair(XLMRobertaXLForMaskedLM, config, inputs)
    compare(a, b, inputs)


def test_eager_attention_implementation():
    config = cfg(attn_implementation="eager")
    inputs = make_inputs(config, batch=4)
    m, h, a, b = run_pair(XLMRobertaXLForMaskedLM, config, inputs)
    assert h.config._attn_implementation == "eager"
    compare(a, b, inputs)


# -- low precision ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_low_precision_within_2x_transformers(dtype, attn):
    config = cfg()
    inputs = make_inputs(config, batch=4, seed=6)
    m32 = build(XLMRobertaXLForMaskedLM, config)
    truth = m32(**inputs)
    kw = {"output_attentions": True} if attn == "eager" else {}
    m = build(XLMRobertaXLForMaskedLM, config).to(dtype)
    h = hf_twin(m)
    a, b = m(**inputs, **kw), h(**inputs, **kw)
    assert a.logits.dtype == dtype and a.logits.shape == truth.logits.shape
    assert_lowp(a.logits, b.logits, truth.logits, real(inputs), f"logits {dtype} {attn}")
    assert torch.isfinite(a.logits).all(), "fully padded row not finite"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fully_padded_rows_stay_finite(dtype):
    config = cfg(is_decoder=False)
    m = build(XLMRobertaXLModel, config).to(dtype)
    inputs = make_inputs(config, batch=2, fully_padded_row=True)
    for kw in ({}, {"output_attentions": True}):
        out = m(**inputs, **kw)
        assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()


# -- outputs ------------------------------------------------------------------------------------------------------
def test_model_output_behaves_like_transformers():
    config = cfg()
    m = build(XLMRobertaXLForMaskedLM, config)
    out = m(**make_inputs(config))
    assert out.loss is None and "loss" not in out and list(out.keys()) == ["logits"]
    assert out[0] is out.logits and out["logits"] is out.logits and out.to_tuple() == (out.logits,)
    with pytest.raises(KeyError):
        out["loss"]
    out2 = m(**make_inputs(config), output_hidden_states=True)
    assert list(out2.keys()) == ["logits", "hidden_states"] and out2[1] is out2.hidden_states
    logits, hidden = out2.to_tuple()
    assert hidden is out2.hidden_states


def test_save_and_load_round_trip(tmp_path):
    """Integration with xlmrxl.checkpoint (owned elsewhere): our save_pretrained / from_pretrained delegations."""
    config = cfg()
    m = build(XLMRobertaXLForMaskedLM, config)
    m.save_pretrained(tmp_path)
    back = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, torch_dtype=torch.float32)
    inputs = make_inputs(config)
    assert max_err(back(**inputs).logits, m(**inputs).logits, real(inputs)) == 0.0
    assert xlmrxl.XLMRobertaXLModel.from_pretrained(tmp_path).pooler is not None
