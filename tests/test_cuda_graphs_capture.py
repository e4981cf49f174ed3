"""CUDA-graph capture and replay: on CPU with CUDA's graph recording replaced by a fake that re-runs the captured
function into the same output tensors (capture once per bucket, invalidation, LRU, tuple outputs, the decode runner),
and on a GPU for real. Buckets, modes and emulated parity: ``tests/test_cuda_graphs.py``."""

from __future__ import annotations

import pytest
import torch

from tests._oracle import left_padded, max_err
from tests.test_cuda_graphs import (
    TOL,
    _embed,
    _emulated,
    _mask,
    _model,
    _unbucketed,
    decode_step,
    eager_decode,
    packed_run,
)
from xlmrxl.fast import graphs, pack
from xlmrxl.fast.decode_graph import DecodeGraphRunner
from xlmrxl.fast.graphs import PackedGraphRunner, module_tensors


@pytest.fixture(scope="module")
def model():
    return _model()


# ---------------------------------------------------------------------------------------------------------------
# the capture / replay logic on CPU, with CUDA's graph recording replaced by a fake that re-runs the captured
# function into the same output tensors on replay (what a real graph does to memory)
# ---------------------------------------------------------------------------------------------------------------
class _FakeGraph:
    def __init__(self, fn, out):
        self.fn, self.out, self.replays = fn, out, 0

    def replay(self):
        self.replays += 1
        new = self.fn()
        for dst, src in zip(_flat(self.out), _flat(new)):
            dst.copy_(src)


def _flat(out):
    return [out] if isinstance(out, torch.Tensor) else list(out)


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    """Runners take their 'graph' branch on CPU; warm-up and recording are counted, replays re-run the function."""
    log = {"warmups": 0, "records": 0, "in_capture_during_record": []}

    def warm_up(fn, n):
        log["warmups"] += n
        for _ in range(n):
            fn()

    def record(fn, pool):
        log["records"] += 1
        log["in_capture_during_record"].append(graphs.in_capture())
        out = fn()
        return _FakeGraph(fn, out), out

    monkeypatch.setattr(graphs, "_warm_up", warm_up)
    monkeypatch.setattr(graphs, "_record", record)
    monkeypatch.setattr(graphs._GraphBase, "_use_static", lambda self, device: None if self.mode is False else "graph")
    return log


def test_capture_once_per_bucket_then_replay(model, fake_cuda_graphs):
    log = fake_cuda_graphs
    runner = PackedGraphRunner(
        packed_run(model.encoder),
        hidden_size=model.config.hidden_size,
        dtype=torch.float32,
        mode=True,
        pool="shared-pool",
        tensors=module_tensors(model.encoder),
    )
    results = []
    with torch.inference_mode():
        for lengths in ([9, 8], [8, 9], [6, 5], [30], [9, 8]):
            mask = _mask(lengths, max(lengths), [False] * len(lengths))
            ids = torch.randint(3, model.config.vocab_size, mask.shape).masked_fill(mask == 0, 1)
            hidden = _embed(model, ids, mask)
            got, _ = _emulated(model, hidden, mask, runner)
            want = _unbucketed(model, hidden, mask)
            assert max_err(got, want, mask.bool()) <= TOL, lengths
            results.append((got, want, mask))
    # buckets: (24, 4, 16) for the two 17-token calls and the last, (16, 4, 16) for 11 tokens, (32, 2, 32)
    assert runner.captures == log["records"] == 3 == len(runner._slots)
    assert log["warmups"] == 3 * runner.warmup and all(log["in_capture_during_record"])
    assert not graphs.in_capture()
    assert sum(s.graph.replays for s in runner._slots.values()) == 5
    # results are copies: later replays (same bucket, same static output tensor) did not change earlier results
    for got, want, mask in results:
        assert max_err(got, want, mask.bool()) <= TOL


def test_capture_dropped_when_weights_move(fake_cuda_graphs):
    m = _model(seed=2)
    runner = PackedGraphRunner(
        packed_run(m.encoder),
        hidden_size=m.config.hidden_size,
        dtype=torch.float32,
        mode=True,
        pool="p",
        tensors=module_tensors(m.encoder),
    )
    x, cu = torch.randn(12, m.config.hidden_size), torch.tensor([0, 12], dtype=torch.int32)
    with torch.inference_mode():
        runner(x, cu, 12)
        runner(x, cu, 12)
        assert runner.captures == 1  # the q/k/v fusion of the first run re-pointed weights; no second capture
        m.float()  # same storages: nothing to do
        runner(x, cu, 12)
        assert runner.captures == 1
        with torch.no_grad():
            m.encoder.LayerNorm.weight.data = m.encoder.LayerNorm.weight.data.clone()
        runner(x, cu, 12)
        assert runner.captures == 2
    runner.set_mode(False)
    assert runner.num_graphs == 0


def test_least_recently_used_bucket_is_dropped():
    r = PackedGraphRunner(lambda x, cu, ms: x, hidden_size=4, dtype=torch.float32, mode="emulate", max_graphs=2)
    for t in (10, 20, 10, 40):  # buckets 16, 24, 16 (used again), 48: 24 is dropped
        r(torch.randn(t, 4), torch.tensor([0, t], dtype=torch.int32), t)
    assert [b.tokens for b in r._slots] == [16, 48]


def test_tuple_outputs_are_sliced():
    r = PackedGraphRunner(
        lambda x, cu, ms: (x + 1, x * 2, x[:, :2]), hidden_size=4, dtype=torch.float32, mode="emulate"
    )
    x = torch.randn(7, 4)
    a, b, c = r(x, torch.tensor([0, 7], dtype=torch.int32), 7)
    assert torch.equal(a, x + 1) and torch.equal(b, x * 2) and torch.equal(c, x[:, :2])


# ---------------------------------------------------------------------------------------------------------------
# the cached decode step
# ---------------------------------------------------------------------------------------------------------------
def test_decode_emulated_matches_eager_across_kv_buckets():
    from xlmrxl import StaticCache

    m = _model(seed=3, is_decoder=True)
    cfg, enc, H = m.config, m.encoder, m.config.hidden_size
    B, P, steps, L = 3, 13, 8, 40  # cached length goes 13 -> 21: crosses the 16 and 24 bucket edges
    eager_cache, graph_cache = StaticCache(cfg, B, L), StaticCache(cfg, B, L)
    runner = DecodeGraphRunner(
        decode_step(enc), graph_cache, hidden_size=H, dtype=torch.float32, mode="emulate", min_tokens=16
    )
    _, mask = left_padded(cfg, [13, 9, 4], P, seed=5)
    g = torch.Generator().manual_seed(9)
    with torch.inference_mode():
        prefill = torch.randn(B, P, H, generator=g)
        a = eager_decode(enc, prefill, mask, eager_cache, m.backend)[0]
        b = runner(prefill, mask)  # S > 1: the eager step on the real cache
        assert max_err(a, b) == 0 and not runner._slots
        errs = []
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
            h = torch.randn(B, 1, H, generator=g)
            want = eager_decode(enc, h, mask, eager_cache, m.backend)[0]
            got = runner(h, mask)
            assert got.shape == want.shape
            errs.append(max_err(got, want))
            assert graph_cache.get_seq_length() == eager_cache.get_seq_length()
    assert max(errs) <= TOL, errs
    assert {k for k, _ in runner._slots} == {16, 24}
    n = eager_cache.get_seq_length()
    for layer in range(cfg.num_hidden_layers):
        ke, ve = eager_cache.get_layer(layer)
        kg, vg = graph_cache.get_layer(layer)
        assert max_err(ke, kg) <= TOL and max_err(ve, vg) <= TOL
        assert float(graph_cache.keys[layer][:, :, n:].abs().max()) == 0  # nothing written past the real length


@pytest.mark.parametrize("masked", [True, False])
def test_decode_fake_capture_replay_matches_eager(fake_cuda_graphs, masked):
    from xlmrxl import StaticCache

    m = _model(seed=4, is_decoder=True)
    cfg, enc, H = m.config, m.encoder, m.config.hidden_size
    B, P = 2, 6
    eager_cache, graph_cache = StaticCache(cfg, B, 30), StaticCache(cfg, B, 30)
    runner = DecodeGraphRunner(decode_step(enc), graph_cache, hidden_size=H, dtype=torch.float32, mode=True, pool="p")
    mask = left_padded(cfg, [6, 3], P, seed=1)[1] if masked else None
    g = torch.Generator().manual_seed(11)
    with torch.inference_mode():
        prefill = torch.randn(B, P, H, generator=g)
        eager_decode(enc, prefill, mask, eager_cache, m.backend)
        runner(prefill, mask)
        errs = []
        for _ in range(12):  # 6 -> 18 cached: buckets 16 and 24
            if mask is not None:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
            h = torch.randn(B, 1, H, generator=g)
            want = eager_decode(enc, h, mask, eager_cache, m.backend)[0]
            errs.append(max_err(runner(h, mask), want))
    assert max(errs) <= TOL, errs
    assert runner.captures == 2 and sum(s.graph.replays for s in runner._slots.values()) == 12


def test_decode_full_cache_is_an_error():
    from xlmrxl import StaticCache

    m = _model(seed=3, is_decoder=True)
    cache = StaticCache(m.config, 1, 4)
    runner = DecodeGraphRunner(
        decode_step(m.encoder), cache, hidden_size=m.config.hidden_size, dtype=torch.float32, mode="emulate"
    )
    with torch.inference_mode():
        runner(torch.randn(1, 4, m.config.hidden_size), None)
        with pytest.raises(ValueError, match="StaticCache is full"):
            runner(torch.randn(1, 1, m.config.hidden_size), None)


# ---------------------------------------------------------------------------------------------------------------
# GPU: capture and replay for real
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_capture_replay_matches_eager():
    m = _model(seed=5).cuda()
    run = packed_run(m.encoder, backend="auto")
    runner = PackedGraphRunner(
        run, hidden_size=m.config.hidden_size, dtype=torch.float32, mode=True, tensors=module_tensors(m.encoder)
    )
    with torch.inference_mode():
        for lengths in ([24], [9, 8], [6, 6, 5], [23], [25], [7, 0, 5, 4], [9, 8]):
            mask = _mask(lengths, max(lengths), [False] * len(lengths)).cuda()
            ids = torch.randint(3, m.config.vocab_size, mask.shape, device="cuda").masked_fill(mask == 0, 1)
            hidden = m.embeddings(input_ids=ids)
            x, packing = pack(hidden, mask)
            got = runner(x, packing.cu_seqlens, packing.max_seqlen)
            want = run(x, packing.cu_seqlens, packing.max_seqlen)
            assert max_err(got, want) <= 1e-4, lengths
        assert runner.num_graphs == runner.captures == len(runner._slots)
        captures = runner.captures
        mask = _mask([9, 8], 9, [False, False]).cuda()
        x, packing = pack(m.embeddings(input_ids=torch.full(mask.shape, 5, device="cuda")), mask)
        runner(x, packing.cu_seqlens, packing.max_seqlen)
        assert runner.captures == captures  # replayed, not captured again


@pytest.mark.gpu
def test_cuda_decode_capture_replay_matches_eager():
    from xlmrxl import StaticCache

    m = _model(seed=3, is_decoder=True).cuda()
    cfg, enc, H = m.config, m.encoder, m.config.hidden_size
    B, P = 2, 13
    eager_cache = StaticCache(cfg, B, 40, dtype=torch.float32, device="cuda")
    graph_cache = StaticCache(cfg, B, 40, dtype=torch.float32, device="cuda")
    runner = DecodeGraphRunner(decode_step(enc, "auto"), graph_cache, hidden_size=H, dtype=torch.float32, mode=True)
    _, mask = left_padded(cfg, [13, 6], P, seed=5)
    mask = mask.cuda()
    with torch.inference_mode():
        prefill = torch.randn(B, P, H, device="cuda")
        eager_decode(enc, prefill, mask, eager_cache, "auto")
        runner(prefill, mask)
        for _ in range(8):
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device="cuda")], dim=1)
            h = torch.randn(B, 1, H, device="cuda")
            want = eager_decode(enc, h, mask, eager_cache, "auto")[0]
            got = runner(h, mask)
            assert max_err(got, want) <= 1e-4
    assert runner.captures == 2  # kv buckets 16 and 24
