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
from xlmrxl.fast import Packing, decode, graphs, pack, packed_stack
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
