"""The record of what ran (``xlmrxl.record``): ``model.last_route``, ``xlmrxl.stats()`` / ``reset_stats``, the DEBUG
line per call, and fallback messages that name what triggered them (parameters versus inputs requiring grad)."""

import logging

import torch
from _oracle import make_inputs, random_model
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.reasons import AUTOGRAD


def _model(**kw):
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(**kw))
    return random_model(xlmrxl.XLMRobertaXLModel, cfg, seed=3).eval()


def test_last_route_and_stats_count_routes_ops_and_fallbacks():
    m = _model()
    inputs = make_inputs(m.config, batch=3, seq=9, seed=1, fully_padded_row=False)
    assert m.last_route is None
    xlmrxl.reset_stats()
    with torch.inference_mode():
        m(**inputs)
        m(**inputs)
    lr = m.last_route
    assert lr.path == "packed" and lr.reasons == () and lr.why.startswith("packed")
    assert xlmrxl.last_route(m) == lr
    m(**inputs)  # grad mode on, parameters require grad: the exact path
    lr = m.last_route
    assert lr.path == "exact" and lr.reasons[0].code == AUTOGRAD and "parameters require grad" in lr.why
    s = xlmrxl.stats(reset=True)
    assert s["routes"] == {"packed": 2, "cached": 0, "exact": 1}
    assert s["fallbacks"] == {AUTOGRAD: 1}
    assert s["ops"]["attention_varlen"] == {"kernel": 0, "pytorch": 2}  # CPU: PyTorch's own, once per forward
    assert all(v["kernel"] + v["pytorch"] == 2 for v in s["ops"].values())
    assert set(s["graphs"]) == {"captures", "replays", "emulated", "eager"}
    again = xlmrxl.stats()
    assert again["routes"] == {"packed": 0, "cached": 0, "exact": 0} and again["ops"] == {}
    assert m.last_route.path == "exact"  # a reset keeps each model's last route


def test_emulated_graph_runs_are_counted_and_shown_in_last_route():
    m = _model().set_cuda_graphs("emulate")
    inputs = make_inputs(m.config, batch=2, seq=7, seed=2, fully_padded_row=False)
    xlmrxl.reset_stats()
    with torch.inference_mode():
        m(**inputs)
    assert m.last_route.graph == "emulated" and "emulated" in m.last_route.why
    assert xlmrxl.stats()["graphs"]["emulated"] == 1
    m.set_cuda_graphs(False)
    with torch.inference_mode():
        m(**inputs)
    assert m.last_route.graph is None


def test_debug_line_per_call(caplog):
    m = _model()
    inputs = make_inputs(m.config, batch=3, seq=9, seed=1, fully_padded_row=False)
    real = int(inputs["attention_mask"].sum())
    with caplog.at_level(logging.DEBUG, logger="xlmrxl"), torch.inference_mode():
        m(**inputs)
        m(**inputs)
    lines = [r.getMessage() for r in caplog.records if "route=" in r.getMessage()]
    assert len(lines) == 2
    pad = 100.0 * (27 - real) / 27
    assert lines[0] == f"xlmrxl: route=packed tokens={real}/27 padding avoided={pad:.1f}%"


def test_fallback_names_parameters_when_only_parameters_require_grad():
    m = _model()
    inputs = make_inputs(m.config, batch=2, seq=5, seed=1)
    m(**inputs)  # grad mode on, parameters require grad, integer inputs
    why = m.last_route.why
    assert "parameters require grad" in why and "input" not in why.split("inference-only")[0].split("(e.g.")[0]
    assert "requires_grad_(False)" in why


def test_fallback_names_the_input_when_only_the_input_requires_grad():
    m = _model().requires_grad_(False)
    inputs = make_inputs(m.config, batch=2, seq=5, seed=1)
    emb = m.embeddings.word_embeddings(inputs["input_ids"]).detach().requires_grad_(True)
    m(inputs_embeds=emb, attention_mask=inputs["attention_mask"])
    why = m.last_route.why
    assert m.last_route.path == "exact" and "input hidden states require grad" in why
    assert "parameters require grad" not in why
    m.requires_grad_(True)
    m(inputs_embeds=emb.detach(), attention_mask=inputs["attention_mask"])
    assert "parameters require grad" in m.last_route.why
