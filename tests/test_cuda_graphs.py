"""CUDA graphs (``xlmrxl.fast.graphs``, wired in ``xlmrxl.fast.stack``): buckets, the inert-padding rule, modes,
invalidation, and parity of the emulated static-buffer path (``XLMRXL_CUDA_GRAPHS=emulate`` /
``cuda_graphs="emulate"``) with the unbucketed packed forward and the exact path, through the runners and through
the model API (backbone, heads, ``generate`` with a StaticCache). On a GPU the ``gpu`` tests capture and replay for
real.
"""

from __future__ import annotations

import pytest
import torch

from tests._oracle import left_padded, max_err, random_model
from tests.conftest import tiny_config_kwargs
from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLModel
from xlmrxl.backend import Backend
from xlmrxl.fast import Packing, decode, graphs, pack, packed_stack, stack
from xlmrxl.fast.decode_graph import DecodeGraphRunner
from xlmrxl.fast.graphs import (
    PackedBucket,
    PackedGraphRunner,
    ceil_bucket,
    module_tensors,
    pad_cu_seqlens,
    plan_packed_bucket,
    resolve_mode,
    token_buckets,
)
from xlmrxl.reasons import CUDA_GRAPHS
from xlmrxl_kernels import env

TOL = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# seams: the packed forward and the decode step, from the layer stack
# ---------------------------------------------------------------------------------------------------------------
def packed_run(encoder, backend="reference", causal=False):
    """``run(x, cu_seqlens, max_seqlen) -> (T, H)``: ``packed_stack`` (layer stack + final LayerNorm) on packed rows
    delimited by a (static, padded) ``cu_seqlens``."""
    be = backend if isinstance(backend, Backend) else Backend(backend)

    def run(x, cu, max_seqlen):
        lengths = () if x.is_cuda else tuple(torch.diff(cu).tolist())  # (the reference attention loops on them)
        p = Packing(cu.shape[0] - 1, 0, None, cu, max_seqlen, lengths)
        return packed_stack(encoder, x, p, be, causal=causal)[0]

    return run


def eager_decode(encoder, hidden, mask, cache, backend="reference"):
    """The fused decoder step, never through a graph runner (the reference the runners are compared with)."""
    be = backend if isinstance(backend, Backend) else Backend(backend)
    return decode._decoder_forward(encoder, hidden, mask, cache, be, False, None)


def decode_step(encoder, backend="reference"):
    def step(hidden, mask, cache):
        return eager_decode(encoder, hidden, mask, cache, backend)[0]

    return step


def _model(seed=0, cls=XLMRobertaXLModel, **kw):
    return random_model(cls, XLMRobertaXLConfig(**tiny_config_kwargs(**kw)), seed=seed)


@pytest.fixture(scope="module")
def model():
    return _model()


def _embed(model, ids, mask):
    with torch.inference_mode():
        return model.embeddings(input_ids=ids)


def _mask(lengths, seq, left):
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for r, (n, lp) in enumerate(zip(lengths, left)):
        if lp:
            mask[r, seq - n :] = 1
        else:
            mask[r, :n] = 1
    return mask


def _emulated(model, hidden, mask, runner):
    x, packing = pack(hidden, mask)
    out = runner(x, packing.cu_seqlens, packing.max_seqlen)
    return packing.unpack(out), packing


def _unbucketed(model, hidden, mask, causal=False):
    x, packing = pack(hidden, mask)
    return packing.unpack(packed_stack(model.encoder, x, packing, model.backend, causal=causal)[0])


# ---------------------------------------------------------------------------------------------------------------
# buckets and the padding rule
# ---------------------------------------------------------------------------------------------------------------
def test_token_buckets_ladder_and_waste():
    ladder = token_buckets()
    assert ladder == (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
    assert token_buckets(100) == (16, 24, 32, 48, 64, 96, 100)
    assert token_buckets(5000)[-2:] == (4096, 5000)
    worst = max((ceil_bucket(t, ladder) - t) / ceil_bucket(t, ladder) for t in range(17, 4097))
    assert worst <= 1 / 3, worst  # a call just past a bucket wastes at most a third of the next one
    assert ceil_bucket(4097, ladder) is None


@pytest.mark.parametrize("b", [16, 24, 48, 96])
def test_bucket_edges(b):
    ladder = token_buckets()
    assert ceil_bucket(b, ladder) == b
    assert ceil_bucket(b - 1, ladder) == b
    nxt = ladder[ladder.index(b) + 1]
    assert ceil_bucket(b + 1, ladder) == nxt


def test_plan_and_padded_cu_seqlens_rule():
    """Real offsets unchanged; pad rows split into segments <= Sb; empty segments last; Bb + 1 offsets."""
    ladder = token_buckets()
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        B = int(torch.randint(1, 9, (1,), generator=g))
        lens = torch.randint(0, 40, (B,), generator=g).tolist()
        T = sum(lens)
        if T == 0:
            continue
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        b = plan_packed_bucket(T, B, max(lens), ladder, 512)
        assert isinstance(b, PackedBucket) and b.tokens >= T and b.seqlen >= max(lens)
        full = pad_cu_seqlens(cu, b)
        assert len(full) == b.segments + 1 and full[: B + 1] == cu and full[-1] == b.tokens
        seg = [e - s for s, e in zip(full[:-1], full[1:])]
        assert min(seg) >= 0 and max(seg) <= b.seqlen, (lens, b, full)
    assert plan_packed_bucket(5000, 1, 5000, ladder, 512) is None
    assert plan_packed_bucket(600, 600, 1, ladder, 512) is None  # too many segments


def test_runner_static_cu_matches_rule():
    seen = {}

    def run(x, cu, ms):
        seen.update(x=x.clone(), cu=cu.tolist(), ms=ms)
        return x * 2

    r = PackedGraphRunner(run, hidden_size=4, dtype=torch.float32, mode="emulate")
    x = torch.randn(17, 4)
    out = r(x, torch.tensor([0, 9, 9, 17], dtype=torch.int32), 9)
    b = r.bucket(17, 3, 9)
    assert seen["cu"] == pad_cu_seqlens([0, 9, 9, 17], b) and seen["ms"] == b.seqlen
    assert seen["x"].shape == (b.tokens, 4) and torch.equal(seen["x"][17:], torch.zeros(b.tokens - 17, 4))
    assert out.shape == (17, 4) and torch.equal(out, x * 2)
    # a smaller call in the same bucket: the stale rows of the previous call are zeroed again
    r(torch.randn(16, 4), torch.tensor([0, 16], dtype=torch.int32), 16)
    assert torch.equal(seen["x"][16:], torch.zeros(seen["x"].shape[0] - 16, 4))


# ---------------------------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------------------------
def test_resolve_mode_and_env(monkeypatch):
    monkeypatch.delenv(graphs.ENV_VAR, raising=False)
    env.refresh()
    assert resolve_mode() == "auto" and resolve_mode("auto") == "auto"
    assert resolve_mode(True) is True and resolve_mode(False) is False and resolve_mode("emulate") == "emulate"
    for raw, want in (("emulate", "emulate"), ("off", False), ("1", True), (" On ", True), ("", "auto")):
        monkeypatch.setenv(graphs.ENV_VAR, raw)
        env.refresh()
        assert resolve_mode() == want and resolve_mode("auto") == want
        assert resolve_mode(False) is False  # an explicit choice wins over the environment
    monkeypatch.setenv(graphs.ENV_VAR, "sometimes")
    env.refresh()
    with pytest.raises(ValueError, match=r"XLMRXL_CUDA_GRAPHS='sometimes'.*auto, on, off, emulate"):
        resolve_mode()
    with pytest.raises(ValueError, match="XLMRXL_CUDA_GRAPHS"):
        PackedGraphRunner(lambda *a: None, hidden_size=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="cuda_graphs='maybe'"):
        resolve_mode("maybe")


def test_modes_on_cpu(monkeypatch):
    monkeypatch.delenv(graphs.ENV_VAR, raising=False)
    env.refresh()
    calls = []

    def run(x, cu, ms):
        calls.append(x.shape[0])
        return x + 1

    x, cu = torch.randn(5, 4), torch.tensor([0, 5], dtype=torch.int32)
    for mode in ("auto", False):  # eager on CPU: the call's own tensors
        calls.clear()
        assert torch.equal(PackedGraphRunner(run, hidden_size=4, dtype=torch.float32, mode=mode)(x, cu, 5), x + 1)
        assert calls == [5]
    with pytest.raises(ValueError, match="cuda_graphs=True but the tensors are on cpu"):
        PackedGraphRunner(run, hidden_size=4, dtype=torch.float32, mode=True)(x, cu, 5)
    monkeypatch.setenv(graphs.ENV_VAR, "emulate")
    env.refresh()
    calls.clear()
    r = PackedGraphRunner(run, hidden_size=4, dtype=torch.float32)
    assert torch.equal(r(x, cu, 5), x + 1) and calls == [16]
    # beyond the buckets: eager
    calls.clear()
    big = torch.randn(40, 4)
    r2 = PackedGraphRunner(run, hidden_size=4, dtype=torch.float32, mode="emulate", max_tokens=32)
    assert torch.equal(r2(big, torch.tensor([0, 40], dtype=torch.int32), 40), big + 1) and calls == [40]
    r.set_mode(False)
    assert not r._slots
    calls.clear()
    r(x, cu, 5)
    assert calls == [5]


def test_no_capture_inside_a_capture():
    r = PackedGraphRunner(lambda *a: None, hidden_size=4, dtype=torch.float32, mode=True)
    with graphs._capturing():
        assert graphs.in_capture()
        assert r._use_static(torch.device("cuda")) is None  # runs straight into the outer capture
    assert r._use_static(torch.device("cuda")) == "graph"


# ---------------------------------------------------------------------------------------------------------------
# parity of the emulated path with the unbucketed forward and with the exact path
# ---------------------------------------------------------------------------------------------------------------
CASES = {
    # name: (lengths, seq, left-padded rows)
    "batch1_full": ([24], 24, [False]),  # T = bucket
    "batch1_edge_minus": ([23], 23, [False]),  # T = bucket - 1
    "batch1_edge_plus": ([25], 25, [False]),  # T = bucket + 1
    "right_pad_same_bucket_a": ([9, 8], 9, [False, False]),  # T = 17 -> 24
    "left_pad_same_bucket_b": ([6, 6, 5], 6, [True, True, True]),  # T = 17 -> 24
    "mixed_pad_fully_padded_row": ([7, 0, 5, 4], 8, [False, False, True, True]),  # T = 16 (edge), empty row
    "mixed_edge_plus": ([12, 5, 0, 8], 12, [True, False, False, True]),  # T = 25
    "no_padding_batch3": ([8, 8, 8], 8, [False, False, False]),  # mask all ones, T = 24
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_emulated_parity_with_unbucketed_and_exact(model, case):
    lengths, seq, left = CASES[case]
    config = model.config
    ids = torch.randint(3, config.vocab_size, (len(lengths), seq), generator=torch.Generator().manual_seed(7))
    mask = _mask(lengths, seq, left)
    ids = ids.masked_fill(mask == 0, config.pad_token_id)
    runner = PackedGraphRunner(
        packed_run(model.encoder),
        hidden_size=config.hidden_size,
        dtype=torch.float32,
        mode="emulate",
        tensors=module_tensors(model.encoder),
    )
    with torch.inference_mode():
        hidden = _embed(model, ids, mask)
        want = _unbucketed(model, hidden, mask)
        got, packing = _emulated(model, hidden, mask, runner)
        exact = model(ids, attention_mask=mask, output_attentions=True).last_hidden_state  # the exact path
    real = mask.bool()
    assert got.shape == want.shape and got.dtype == torch.float32
    assert runner._slots, "the bucketed path did not run"
    (bucket,) = runner._slots
    assert bucket.tokens == ceil_bucket(sum(lengths), runner.ladder)
    e1, e2 = max_err(got, want, real), max_err(got, exact, real)
    assert e1 <= TOL and e2 <= TOL, f"{case}: vs unbucketed {e1:.3g}, vs exact {e2:.3g}"
    assert float(got[~real].abs().max()) == 0 if (~real).any() else True


def test_batch_shapes_sharing_one_bucket_reuse_its_buffers(model):
    """Three calls with 17 real tokens in 1, 2 and 3 rows: one token bucket (24); slots keyed by segments too."""
    runner = PackedGraphRunner(
        packed_run(model.encoder), hidden_size=model.config.hidden_size, dtype=torch.float32, mode="emulate"
    )
    outs = []
    for lengths in ([17], [9, 8], [6, 6, 5], [8, 9]):
        mask = _mask(lengths, max(lengths), [False] * len(lengths))
        ids = torch.randint(3, model.config.vocab_size, mask.shape).masked_fill(mask == 0, 1)
        with torch.inference_mode():
            hidden = _embed(model, ids, mask)
            got, _ = _emulated(model, hidden, mask, runner)
            want = _unbucketed(model, hidden, mask)
        outs.append(max_err(got, want, mask.bool()))
    assert max(outs) <= TOL, outs
    assert {b.tokens for b in runner._slots} == {24}
    assert len(runner._slots) == 2  # segments 2 ([17]) and 4 (two or three rows + a pad segment)


def test_pad_rows_are_inert_even_when_garbage(model):
    """The rule, tested hard: the pad rows are overwritten with huge values before the stack runs; the real rows
    do not change (attention segments keep them apart, every other op is row-wise)."""
    base = packed_run(model.encoder)
    state = {}

    def poisoned(x, cu, ms):
        t = state["T"]
        x = x.clone()
        x[t:] = 1e4 * torch.randn_like(x[t:])
        return base(x, cu, ms)

    runner = PackedGraphRunner(poisoned, hidden_size=model.config.hidden_size, dtype=torch.float32, mode="emulate")
    ids, mask = left_padded(model.config, [7, 3, 9], 9, seed=2)
    with torch.inference_mode():
        hidden = _embed(model, ids, mask)
        state["T"] = int(mask.sum())
        got, _ = _emulated(model, hidden, mask, runner)
        want = _unbucketed(model, hidden, mask)
    assert max_err(got, want, mask.bool()) <= TOL


def test_emulated_parity_causal_and_device_max_seqlen():
    """A decoder's packed (cache-free) route: causal attention inside each segment; and a max_seqlen the host does
    not know (a tensor): the seqlen bucket is then the token bucket."""
    m = _model(seed=6, is_decoder=True)
    seen = []
    base = packed_run(m.encoder, causal=True)

    def run(x, cu, ms):
        seen.append(ms)
        return base(x, cu, ms)

    runner = PackedGraphRunner(run, hidden_size=m.config.hidden_size, dtype=torch.float32, mode="emulate")
    ids, mask = left_padded(m.config, [9, 4, 7], 9, seed=8)
    with torch.inference_mode():
        hidden = _embed(m, ids, mask)
        want = _unbucketed(m, hidden, mask, causal=True)
        got, _ = _emulated(m, hidden, mask, runner)
        x, packing = pack(hidden, mask)
        got_t = packing.unpack(runner(x, packing.cu_seqlens, torch.tensor(packing.max_seqlen)))
    real = mask.bool()
    assert max_err(got, want, real) <= TOL and max_err(got_t, want, real) <= TOL
    assert seen == [16, 24]  # T = 20: seqlen bucket 16 from the host max 9, else the token bucket 24


@pytest.mark.triton
def test_emulated_parity_triton_kernels(model):
    """The same with the Triton kernels (interpreter on CPU): the varlen kernel checks max_seqlen >= every segment,
    including the pad segments."""
    runner = PackedGraphRunner(
        packed_run(model.encoder, backend="triton"),
        hidden_size=model.config.hidden_size,
        dtype=torch.float32,
        mode="emulate",
    )
    ids, mask = left_padded(model.config, [7, 0, 10], 10, seed=4)
    with torch.inference_mode():
        hidden = _embed(model, ids, mask)
        got, _ = _emulated(model, hidden, mask, runner)
        want = _unbucketed(model, hidden, mask)
    assert max_err(got, want, mask.bool()) <= 1e-4


# ---------------------------------------------------------------------------------------------------------------
# invalidation
# ---------------------------------------------------------------------------------------------------------------
def test_fingerprint_invalidation():
    m = _model(seed=1)
    runner = PackedGraphRunner(
        packed_run(m.encoder),
        hidden_size=m.config.hidden_size,
        dtype=torch.float32,
        mode="emulate",
        tensors=module_tensors(m.encoder),
    )
    x = torch.randn(10, m.config.hidden_size)
    cu = torch.tensor([0, 10], dtype=torch.int32)
    with torch.inference_mode():
        first = runner(x, cu, 10, key="k0")
        slot = next(iter(runner._slots.values()))
        runner(x, cu, 10, key="k0")
        assert next(iter(runner._slots.values())) is slot  # unchanged weights: the same bucket state
        # a new storage for one weight (what .to() / .half() / a swapped module do): every graph is dropped
        lin = m.encoder.layer[1].output.dense
        with torch.no_grad():
            lin.weight.data = lin.weight.data * 2
        second = runner(x, cu, 10, key="k0")
        new_slot = next(iter(runner._slots.values()))
        assert new_slot is not slot and max_err(first, second) > 1e-3
        runner(x, cu, 10, key="k1")  # the caller's structure key changed: dropped and re-collected
        assert next(iter(runner._slots.values())) is not new_slot
        # the same storage updated in place: nothing to drop (a graph reads memory)
        slot = next(iter(runner._slots.values()))
        with torch.no_grad():
            lin.weight.mul_(0.5)
        third = runner(x, cu, 10, key="k1")
        assert next(iter(runner._slots.values())) is slot and max_err(first, third) <= TOL
    runner.set_mode(False)
    assert runner.num_graphs == 0 and not runner._slots


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
