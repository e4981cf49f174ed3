"""CUDA graphs through the model API (``set_cuda_graphs``, ``XLMRXL_CUDA_GRAPHS``): the emulated static-buffer path
under the backbone, the heads and ``generate`` with a StaticCache equals the eager forward; buckets, reasons, weight
moves; the per-layer plans and the route's cached checks. The runners themselves: ``tests/test_cuda_graphs.py``."""

from __future__ import annotations

import pytest
import torch

from tests._oracle import left_padded, max_err
from tests.test_cuda_graphs import CASES, TOL, _mask, _model
from xlmrxl import XLMRobertaXLModel
from xlmrxl.fast import graphs, stack
from xlmrxl.fast.decode_graph import DecodeGraphRunner
from xlmrxl.fast.graphs import ceil_bucket
from xlmrxl.reasons import CUDA_GRAPHS
from xlmrxl_kernels import env


@pytest.fixture(scope="module")
def model():
    return _model()


# ---------------------------------------------------------------------------------------------------------------
# through the model API: cuda_graphs="emulate" / XLMRXL_CUDA_GRAPHS=emulate against the eager forward
# ---------------------------------------------------------------------------------------------------------------
def _ids_mask(config, lengths, seq, left, seed=7):
    mask = _mask(lengths, seq, left)
    ids = torch.randint(3, config.vocab_size, (len(lengths), seq), generator=torch.Generator().manual_seed(seed))
    return ids.masked_fill(mask == 0, config.pad_token_id), mask


def _runner(encoder):
    (runner,) = encoder.__dict__["_xlmrxl_graph_runners"].values()
    return runner


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_api_emulate_matches_eager(case):
    """``model.set_cuda_graphs("emulate")``: the bucketed static-buffer path under the real forward equals the
    unbucketed forward (``set_cuda_graphs(False)``) at fp32 <= 1e-5 on the real positions, zeros at padding."""
    lengths, seq, left = CASES[case]
    m = _model(seed=11)
    ids, mask = _ids_mask(m.config, lengths, seq, left)
    with torch.inference_mode():
        m.set_cuda_graphs(False)
        want = m(ids, attention_mask=mask).last_hidden_state
        assert "_xlmrxl_graph_runners" not in m.encoder.__dict__ or not m.encoder._xlmrxl_graph_runners
        m.set_cuda_graphs("emulate")
        got = m(ids, attention_mask=mask).last_hidden_state
        runner = _runner(m.encoder)
        assert runner.mode == "emulate" and len(runner._slots) == 1
        (bucket,) = runner._slots
        assert bucket.tokens == ceil_bucket(max(sum(lengths), 1), runner.ladder)
        assert stack.graph_reasons(m.encoder) == ()
        m.set_cuda_graphs(False)  # off again: the graphs and buffers are dropped, the eager forward runs
        assert not m.encoder._xlmrxl_graph_runners
        again = m(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert max_err(got, want, real) <= TOL and torch.equal(again, want)
    if (~real).any():
        assert float(got[~real].abs().max()) == 0


def test_model_api_batch_shapes_share_a_bucket(monkeypatch):
    """17 real tokens in 1, 2, 3 rows, left and right padded, batch 1: one token bucket; env var mode."""
    monkeypatch.setenv(graphs.ENV_VAR, "emulate")
    env.refresh()
    m = _model(seed=12)  # the variable is read at the first fused call
    ref = _model(seed=12).set_cuda_graphs(False)
    with torch.inference_mode():
        for lengths, left in (([17], [False]), ([9, 8], [True, True]), ([6, 6, 5], [False, True, False])):
            ids, mask = _ids_mask(m.config, lengths, max(lengths) + 2, left)
            got = m(ids, attention_mask=mask).last_hidden_state
            want = ref(ids, attention_mask=mask).last_hidden_state
            assert max_err(got, want, mask.bool()) <= TOL, lengths
    runner = _runner(m.encoder)
    assert runner.mode == "emulate" and {b.tokens for b in runner._slots} == {24}


def test_model_api_bucket_edges_and_fully_padded_batch(model):
    m = _model(seed=13)
    ref = _model(seed=13).set_cuda_graphs(False)
    m.set_cuda_graphs("emulate")
    with torch.inference_mode():
        for T in (16, 24, 47, 48, 49):
            ids, mask = _ids_mask(m.config, [T], T, [False], seed=T)
            got, want = m(ids).last_hidden_state, ref(ids).last_hidden_state  # no mask: no padding at all
            assert max_err(got, want) <= TOL, T
        assert {b.tokens for b in _runner(m.encoder)._slots} == {16, 24, 48, 64}
        ids, mask = _ids_mask(m.config, [0, 0], 5, [False, True])  # every row padded: nothing to run
        got = m(ids, attention_mask=mask).last_hidden_state
        assert float(got.abs().max()) == 0


def test_route_reason_beyond_the_largest_bucket():
    m = _model(seed=14).set_cuda_graphs("emulate", max_tokens=32)
    ref = _model(seed=14).set_cuda_graphs(False)
    with torch.inference_mode():
        ids, mask = _ids_mask(m.config, [30, 10], 30, [False, True])  # 40 tokens > 32
        got, want = m(ids, attention_mask=mask).last_hidden_state, ref(ids, attention_mask=mask).last_hidden_state
        (reason,) = stack.graph_reasons(m.encoder)
        assert reason.code == CUDA_GRAPHS and "40 tokens" in reason and "max_tokens=32" in reason
        assert max_err(got, want, mask.bool()) <= TOL
        ids, mask = _ids_mask(m.config, [20, 10], 20, [False, True])  # 30 tokens: back in the buckets
        m(ids, attention_mask=mask)
        assert stack.graph_reasons(m.encoder) == ()
    # auto on CPU: eager, and the reason says why
    a = _model(seed=14).set_cuda_graphs("auto")
    with torch.inference_mode():
        a(ids, attention_mask=mask)
    (reason,) = stack.graph_reasons(a.encoder)
    assert reason.code == CUDA_GRAPHS and "not CUDA" in reason
    with pytest.raises(ValueError, match="cuda_graphs=True but the tensors are on cpu"), torch.inference_mode():
        _model(seed=14).set_cuda_graphs(True)(ids, attention_mask=mask)


@pytest.mark.parametrize("head", ["XLMRobertaXLForMaskedLM", "XLMRobertaXLForSequenceClassification"])
def test_heads_emulate_match_eager(head):
    import xlmrxl

    cls = getattr(xlmrxl, head)
    m = _model(seed=15, cls=cls).set_cuda_graphs("emulate")
    ref = _model(seed=15, cls=cls).set_cuda_graphs(False)
    # a classification head reads <s>, a pad in a left-padded (or empty) row: such a batch takes the exact path
    cls_head = head.endswith("SequenceClassification")
    lengths, left = ([9, 4, 1, 7], [False] * 4) if cls_head else ([9, 4, 0, 7], [False, True, False, True])
    ids, mask = _ids_mask(m.config, lengths, 9, left)
    with torch.inference_mode():
        got, want = m(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    where = mask.bool() if got.dim() == 3 else None
    assert max_err(got, want, where) <= TOL
    assert _runner(m.roberta.encoder)._slots


def test_env_var_unknown_value_is_an_error(monkeypatch, tmp_path):
    m = _model(seed=16)
    m.save_pretrained(tmp_path)
    monkeypatch.setenv(graphs.ENV_VAR, "sometimes")
    env.refresh()
    with pytest.raises(ValueError, match=r"XLMRXL_CUDA_GRAPHS='sometimes'.*auto, on, off, emulate"):
        XLMRobertaXLModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="XLMRXL_CUDA_GRAPHS"), torch.inference_mode():
        _model(seed=16)(torch.tensor([[0, 5, 6, 2]]))
    monkeypatch.setenv(graphs.ENV_VAR, "off")
    env.refresh()
    loaded = XLMRobertaXLModel.from_pretrained(tmp_path, cuda_graphs="emulate")  # an explicit choice wins
    assert stack.graph_mode(loaded.encoder) == "emulate"
    assert stack.graph_mode(XLMRobertaXLModel.from_pretrained(tmp_path).encoder) is False
    with pytest.raises(ValueError, match="cuda_graphs='maybe'"):
        XLMRobertaXLModel.from_pretrained(tmp_path, cuda_graphs="maybe")


def test_weights_moved_through_the_api_drop_the_buckets():
    m = _model(seed=17).set_cuda_graphs("emulate")
    ids, mask = _ids_mask(m.config, [9, 5], 9, [False, True])
    with torch.inference_mode():
        first = m(ids, attention_mask=mask).last_hidden_state
        runner = _runner(m.encoder)
        slot = next(iter(runner._slots.values()))
        m(ids, attention_mask=mask)
        assert next(iter(runner._slots.values())) is slot  # nothing changed: the same bucket state
        with torch.no_grad():
            m.encoder.layer[0].output.dense.weight.data = m.encoder.layer[0].output.dense.weight.data * 3
        second = m(ids, attention_mask=mask).last_hidden_state
        assert next(iter(runner._slots.values())) is not slot and max_err(first, second) > 1e-3
        slot = next(iter(runner._slots.values()))
        m.encoder.layer[1].output.dense = torch.nn.Linear(*reversed(m.encoder.layer[1].output.dense.weight.shape))
        m(ids, attention_mask=mask)
        assert next(iter(runner._slots.values())) is not slot  # a swapped module: new plans, new buckets


def test_generate_static_cache_emulated_decode_matches_eager():
    """``generate`` (StaticCache) with the decode step through ``DecodeGraphRunner`` (emulated) gives the eager
    tokens and scores; the runner's steps crossed KV buckets."""
    import xlmrxl
    from xlmrxl.generation import generate

    m = _model(seed=18, cls=xlmrxl.XLMRobertaXLForCausalLM, is_decoder=True).set_cuda_graphs("emulate")
    ref = _model(seed=18, cls=xlmrxl.XLMRobertaXLForCausalLM, is_decoder=True).set_cuda_graphs(False)
    ids, mask = left_padded(m.config, [7, 3], 7, seed=3)
    kw = dict(attention_mask=mask, max_new_tokens=12, eos_token_id=-1, return_dict_in_generate=True)
    with torch.inference_mode():
        got = generate(m, ids, output_scores=True, **kw)
        want = generate(ref, ids, output_scores=True, **kw)
    assert torch.equal(got.sequences, want.sequences)
    assert max(max_err(a, b) for a, b in zip(got.scores, want.scores)) <= 1e-4
    (runner,) = _decode_runners_seen  # one per (encoder, StaticCache); max_length 7 + 12 = 19: buckets 16 and 19
    assert runner.mode == "emulate" and {k for k, _ in runner._slots} == {16, 19}


_decode_runners_seen: list = []


@pytest.fixture(autouse=True)
def _record_decode_runners(monkeypatch):
    _decode_runners_seen.clear()
    real = DecodeGraphRunner.__init__

    def init(self, *a, **kw):
        real(self, *a, **kw)
        _decode_runners_seen.append(self)

    monkeypatch.setattr(DecodeGraphRunner, "__init__", init)


def test_static_cache_advance():
    from xlmrxl import StaticCache

    m = _model(seed=3, is_decoder=True)
    cache = StaticCache(m.config, 2, 8)
    cache.advance(3)
    assert cache.get_seq_length() == 3 and cache.get_seq_length(1) == 3
    cache.advance(0)
    with pytest.raises(ValueError, match="StaticCache is full"):
        cache.advance(6)
    with pytest.raises(ValueError, match="token count >= 0"):
        cache.advance(-1)


@pytest.mark.gpu
def test_cuda_model_api_capture_replay_matches_eager():
    """cuda_graphs=True through the model: captured once per bucket, replayed, equal to the eager forward."""
    m = _model(seed=19).cuda().set_cuda_graphs(True)
    ref = _model(seed=19).cuda().set_cuda_graphs(False)
    cases = (([24], [False]), ([9, 8], [False, True]), ([6, 6, 5], [True, False, True]), ([23], [False]))
    with torch.inference_mode():
        for _ in range(2):
            for lengths, left in cases:
                ids, mask = _ids_mask(m.config, lengths, max(lengths), left)
                ids, mask = ids.cuda(), mask.cuda()
                got = m(ids, attention_mask=mask).last_hidden_state
                want = ref(ids, attention_mask=mask).last_hidden_state
                assert max_err(got, want, mask.bool()) <= 1e-4, lengths
                assert stack.graph_reasons(m.encoder) == ()
        runner = _runner(m.encoder)
        assert runner.captures == runner.num_graphs == len(runner._slots)  # the second round only replayed


@pytest.mark.gpu
def test_cuda_generate_decode_graphs_match_eager():
    import xlmrxl
    from xlmrxl.generation import generate

    m = _model(seed=20, cls=xlmrxl.XLMRobertaXLForCausalLM, is_decoder=True).cuda().set_cuda_graphs(True)
    ref = _model(seed=20, cls=xlmrxl.XLMRobertaXLForCausalLM, is_decoder=True).cuda().set_cuda_graphs(False)
    ids, mask = left_padded(m.config, [7, 3], 7, seed=3)
    kw = dict(attention_mask=mask.cuda(), max_new_tokens=12, eos_token_id=-1)
    with torch.inference_mode():
        assert torch.equal(generate(m, ids.cuda(), **kw), generate(ref, ids.cuda(), **kw))
    (runner,) = _decode_runners_seen
    assert runner.captures == 2  # KV buckets 16 and 19


# ---------------------------------------------------------------------------------------------------------------
# the lean stack's cached plans: what they must still see
# ---------------------------------------------------------------------------------------------------------------
def test_plans_see_replaced_parameters_moved_storages_and_copies():
    import copy
    import pickle

    from xlmrxl.fast.structure import layer_plans

    m = _model(seed=21).set_cuda_graphs("emulate")
    ref = _model(seed=21).set_cuda_graphs(False)
    ids, mask = _ids_mask(m.config, [9, 5], 9, [False, True])

    def check():
        with torch.inference_mode():
            got = m(ids, attention_mask=mask).last_hidden_state
            want = ref(ids, attention_mask=mask).last_hidden_state
        assert max_err(got, want, mask.bool()) <= TOL

    check()
    plans = layer_plans(m.encoder)
    assert layer_plans(m.encoder) is plans  # nothing changed: the same plans, no rebuild
    for model in (m, ref):  # a new Parameter object for a LayerNorm weight (the plan held the old one)
        ln = model.encoder.layer[1].LayerNorm
        ln.weight = torch.nn.Parameter(ln.weight.detach() * 1.5)
    check()
    assert layer_plans(m.encoder) is not plans
    for model in (m, ref):  # new storages, same Parameter objects: the fused q/k/v buffer is made again
        model.double()
    ids_d = ids
    with torch.inference_mode():
        got = m(ids_d, attention_mask=mask).last_hidden_state
        want = ref(ids_d, attention_mask=mask).last_hidden_state
    assert got.dtype == torch.float64 and max_err(got, want, mask.bool()) <= 1e-10
    for model in (m, ref):
        model.float()
    check()
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):  # copies start without graph runners
        assert not clone.encoder._xlmrxl_graph_runners
        with torch.inference_mode():
            got = clone(ids, attention_mask=mask).last_hidden_state
            want = ref(ids, attention_mask=mask).last_hidden_state
        assert max_err(got, want, mask.bool()) <= TOL and _runner(clone.encoder)._slots


def test_hooks_added_after_a_fast_call_are_seen():
    from xlmrxl.fast.routing import EXACT, Call, route

    m = _model(seed=22)
    ids, mask = _ids_mask(m.config, [9, 5], 9, [False, True])
    with torch.inference_mode():
        h = m.embeddings(input_ids=ids)
        assert route(m.encoder, Call(hidden_states=h, attention_mask=mask)).path != EXACT
        handle = m.encoder.layer[1].attention.output.dense.register_forward_hook(lambda *a: None)
        assert route(m.encoder, Call(hidden_states=h, attention_mask=mask)).path == EXACT
        handle.remove()
        assert route(m.encoder, Call(hidden_states=h, attention_mask=mask)).path != EXACT
        m.encoder.layer[0].intermediate._hf_hook = object()
        assert route(m.encoder, Call(hidden_states=h, attention_mask=mask)).path == EXACT


def test_route_check_is_cached_until_something_is_assigned(monkeypatch):
    """The per-call structure check reads a version counter, not the modules: the fingerprint (O(layers)) is taken
    again only after a module / Parameter / buffer assignment somewhere."""
    from xlmrxl.fast import structure
    from xlmrxl.fast.routing import Call, route

    m = _model(seed=23)
    ids, mask = _ids_mask(m.config, [9, 5], 9, [False, True])
    calls = []
    real = structure._fingerprint
    monkeypatch.setattr(structure, "_fingerprint", lambda enc: calls.append(1) or real(enc))
    with torch.inference_mode():
        h = m.embeddings(input_ids=ids)
        call = Call(hidden_states=h, attention_mask=mask)
        route(m.encoder, call)
        n = len(calls)
        for _ in range(5):
            route(m.encoder, call)
            structure.layer_plans(m.encoder)
        assert len(calls) == n  # nothing assigned: no fingerprint taken
        m.encoder.layer[0].attention.output.dense.bias = torch.nn.Parameter(torch.zeros(m.config.hidden_size))
        route(m.encoder, call)
        assert len(calls) == n + 1
