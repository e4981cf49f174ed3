"""Cached decoding through the fused path (``fast.decode.decoder_forward``) in our own ``XLMRobertaXLForCausalLM``.

With ``use_cache`` / ``past_key_values`` (DynamicCache, StaticCache, the EncoderDecoderCache the model creates, legacy
tuples) the encoder runs ``decoder_forward``: a prefill of several tokens, multi-token chunks and one-token steps,
left-padded batches whose 2D mask covers cached + new keys. fp32 on real tokens: incremental fast decoding equals a
full forward and the exact (unfused) path <= 1e-5, and the returned cache is the exact path's (same object / type,
same K/V at real positions). Greedy and beam ``generate`` give the exact path's tokens. The work per step is checked
with spies: one QKV GEMM per layer on the new rows, one ``cache.update`` per layer (StaticCache: the compiled
``cache_update`` op), attention of the new queries against the cache's filled prefix, and no host read of a tensor.
The Triton kernels run the same under the interpreter (marked ``triton``, tiny shapes) with no op falling back.
Cross-attention decoders, ``output_attentions``, ``head_mask``, relative positions and autograd keep the exact
path, with the reason logged once. bf16: the fast path's error vs the fp32 truth <= 2x the exact path's.
"""

import logging
import types

import pytest
import torch
import torch.nn.functional as F
from _oracle import FastPathSpy as Spy
from _oracle import assert_lowp, force_exact, left_padded, max_err, random_model
from conftest import tiny_config_kwargs

import xlmrxl.caches.static as xstatic
from xlmrxl import (
    DynamicCache,
    EncoderDecoderCache,
    StaticCache,
    XLMRobertaXLConfig,
    XLMRobertaXLForCausalLM,
    quantization,
)
from xlmrxl.fast import decode as fast_decode
from xlmrxl.fast import layer
from xlmrxl.generation import generate
from xlmrxl.modeling import create_position_ids_from_input_ids
from xlmrxl_kernels import table

TOL = 1e-5
NO_EOS = -1  # never stop early: random weights would hit </s> at random steps


# -- helpers --------------------------------------------------------------------------------------------------------
def cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(is_decoder=True, **kw))


def build(config, seed=0, backend="reference"):
    """Random non-trivial weights, sharper embeddings (fewer greedy near-ties); eval; the given backend."""
    m = random_model(XLMRobertaXLForCausalLM, config, seed, embed_std=0.5)
    m.set_backend(backend)
    return m


def make_cache(kind, config, batch, max_length):
    if kind == "static":
        return StaticCache(config, batch, max_length)
    if kind == "dynamic":
        return DynamicCache()
    if kind == "transformers":  # transformers' own DynamicCache is driven through update() / get_seq_length() too
        return pytest.importorskip("transformers").DynamicCache()
    return None  # the model creates an EncoderDecoderCache(DynamicCache(), DynamicCache()) for use_cache=True


def decode(model, ids, mask, chunks, past=None):
    """Feed ``ids`` in chunks of the given sizes (a prefill, then steps), the 2D mask over cached + new tokens and
    the full-sequence positions (padding-index rule) each time. Returns (logits (B, S, V), the returned cache)."""
    pos = create_position_ids_from_input_ids(ids, model.config.pad_token_id)
    assert sum(chunks) == ids.shape[1]
    logits, start = [], 0
    for n in chunks:
        sl = slice(start, start + n)
        out = model(
            ids[:, sl],
            attention_mask=mask[:, : start + n],
            position_ids=pos[:, sl],
            past_key_values=past,
            use_cache=True,
        )
        assert out.logits.shape == (ids.shape[0], n, model.config.vocab_size)
        logits.append(out.logits)
        past = out.past_key_values
        start += n
    return torch.cat(logits, dim=1), past


def self_layers(cache):
    """Per-layer (keys, values) of the self-attention part of any of the caches above."""
    cache = getattr(cache, "self_attention_cache", cache)
    if hasattr(cache, "get_layer"):
        return [cache.get_layer(i) for i in range(len(cache))]
    return [(layer.keys, layer.values) for layer in cache.layers]  # transformers' DynamicCache


# one prefill of 3 tokens, a 2-token chunk (causal mask with a cached prefix), then one-token steps; row 2's prefill
# is all padding (its queries see no real key), row 1 starts real mid-prefill
LENGTHS, SEQ, CHUNKS = [8, 6, 4], 8, [3, 2, 1, 1, 1]


# -- incremental == full forward == exact path ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["static", "dynamic", "created", "transformers"])
def test_incremental_fast_equals_full_and_exact(kind, monkeypatch):
    config = cfg()
    m = build(config, seed=1)
    ids, mask = left_padded(config, LENGTHS, SEQ, seed=1)
    real = mask.bool()
    spy = Spy(monkeypatch)
    with torch.no_grad():
        full = m(ids, attention_mask=mask, use_cache=False).logits
        assert (spy.encoder, spy.decoder) == (1, 0)
        cache = make_cache(kind, config, len(LENGTHS), SEQ)
        fast, fast_past = decode(m, ids, mask, CHUNKS, past=cache)
        assert (spy.encoder, spy.decoder) == (1, len(CHUNKS)), "cached calls did not all run decoder_forward"
        force_exact(monkeypatch)
        exact, exact_past = decode(m, ids, mask, CHUNKS, past=make_cache(kind, config, len(LENGTHS), SEQ))
        assert (spy.encoder, spy.decoder) == (1, len(CHUNKS)), "forcing the exact path still ran the fast path"
    assert fast.shape == full.shape == exact.shape == (3, SEQ, config.vocab_size) and fast.dtype == torch.float32
    assert torch.isfinite(fast).all()
    e_full, e_exact = max_err(fast, full, real), max_err(fast, exact, real)
    assert e_full <= TOL, f"{kind}: incremental fast path vs full forward max err {e_full:.3g}"
    assert e_exact <= TOL, f"{kind}: incremental fast path vs exact path max err {e_exact:.3g}"
    # the cache comes back as the exact path returns it: the object passed in, or the EncoderDecoderCache it creates
    if cache is not None:
        assert fast_past is cache
    else:
        assert isinstance(fast_past, EncoderDecoderCache) and type(exact_past) is type(fast_past)
        assert fast_past.cross_attention_cache.get_seq_length() == 0
    assert fast_past.get_seq_length() == exact_past.get_seq_length() == SEQ
    heads, hd = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    key_real = real[:, None, :, None].expand(3, heads, SEQ, hd)
    for i, ((k, v), (ke, ve)) in enumerate(zip(self_layers(fast_past), self_layers(exact_past))):
        assert k.shape == ke.shape == (3, heads, SEQ, hd) and k.dtype == ke.dtype == torch.float32
        ek, ev = max_err(k, ke, key_real), max_err(v, ve, key_real)
        assert ek <= TOL and ev <= TOL, f"{kind} layer {i}: cached K/V vs the exact path's: {ek:.3g}, {ev:.3g}"


def test_outputs_tuple_hidden_states_and_legacy_cache(monkeypatch):
    """return_dict=False tuples, output_hidden_states and legacy tuple caches come back as on the exact path."""
    config = cfg()
    m = build(config, seed=2)
    ids, mask = left_padded(config, [5, 3], 5, seed=2)
    real = mask.bool()
    results = {}
    spy = Spy(monkeypatch)
    with torch.no_grad():
        for path in ("fast", "exact"):
            if path == "exact":
                force_exact(monkeypatch)
            first = m(
                ids[:, :4], attention_mask=mask[:, :4], use_cache=True, output_hidden_states=True, return_dict=False
            )
            legacy = first[1].to_legacy_cache()
            pos = create_position_ids_from_input_ids(ids, config.pad_token_id)[:, 4:]
            step = m(
                ids[:, 4:], attention_mask=mask, position_ids=pos, past_key_values=legacy, output_hidden_states=True
            )
            results[path] = (first, step)
    assert spy.decoder == 2
    (f_first, f_step), (e_first, e_step) = results["fast"], results["exact"]
    assert len(f_first) == len(e_first) == 3 and isinstance(f_first[1], EncoderDecoderCache)
    assert max_err(f_first[0], e_first[0], real[:, :4]) <= TOL
    assert len(f_first[2]) == len(e_first[2]) == config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(f_first[2], e_first[2])):
        assert a.shape == b.shape == (2, 4, config.hidden_size)
        assert max_err(a, b, real[:, :4]) <= TOL, f"hidden_states[{i}] differ"
    assert torch.equal(f_first[2][0], e_first[2][0]), "hidden_states[0] must be the embeddings as given"
    assert isinstance(f_step.past_key_values, EncoderDecoderCache) and f_step.past_key_values.get_seq_length() == 5
    assert max_err(f_step.logits, e_step.logits) <= TOL
    assert all(max_err(a, b) <= TOL for a, b in zip(f_step.hidden_states, e_step.hidden_states))


def test_int4_decoder_decodes_fused(monkeypatch):
    """int4 QuantLinear projections (one int4 GEMM for the concatenated q/k/v) decode through the fused path too."""
    config = cfg(hidden_size=128, intermediate_size=256)
    m = build(config, seed=12)
    quantization.quantize(m, group_size=64)
    ids, mask = left_padded(config, LENGTHS, SEQ, seed=12)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        fast, _ = decode(m, ids, mask, CHUNKS, past=StaticCache(config, 3, SEQ))
        assert spy.decoder == len(CHUNKS)
        force_exact(monkeypatch)
        exact, _ = decode(m, ids, mask, CHUNKS, past=StaticCache(config, 3, SEQ))
    assert fast.shape == exact.shape == (3, SEQ, config.vocab_size) and torch.isfinite(fast).all()
    err = max_err(fast, exact, mask.bool())
    assert err <= TOL, f"int4 decoder: fast path vs exact path max err {err:.3g}"


# -- generate --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_greedy_generate_same_tokens_fast_and_exact(cache, monkeypatch):
    config = cfg()
    m = build(config, seed=3)
    ids, _ = left_padded(config, [6, 2, 4], 6, seed=3)
    spy = Spy(monkeypatch)
    fast = generate(m, ids, max_new_tokens=6, eos_token_id=NO_EOS, cache=cache)
    assert spy.decoder == 6, f"prefill + 5 steps should run decoder_forward 6 times, got {spy.decoder}"
    force_exact(monkeypatch)
    exact = generate(m, ids, max_new_tokens=6, eos_token_id=NO_EOS, cache=cache)
    assert spy.decoder == 6
    assert fast.shape == exact.shape == (3, 12) and fast.dtype == torch.long
    assert torch.equal(fast, exact), f"fast path tokens {fast[:, 6:].tolist()} != exact path {exact[:, 6:].tolist()}"


def test_beam_search_same_tokens_fast_and_exact(monkeypatch):
    """Beam search reorders the StaticCache in place between fused steps."""
    config = cfg()
    m = build(config, seed=4)
    ids, _ = left_padded(config, [5, 3], 5, seed=4)
    spy = Spy(monkeypatch)
    fast = generate(m, ids, max_new_tokens=4, num_beams=2, eos_token_id=NO_EOS)
    assert spy.decoder == 4
    force_exact(monkeypatch)
    exact = generate(m, ids, max_new_tokens=4, num_beams=2, eos_token_id=NO_EOS)
    assert fast.shape == exact.shape and torch.equal(fast, exact)


# -- the work one step does -----------------------------------------------------------------------------------------
def test_step_work_qkv_gemm_cache_update_prefix_attention(monkeypatch):
    """Per layer: one fused (3H, H) GEMM on the B*S new rows, one ``cache_update`` op call writing (B, heads, S, D),
    attention of the S new queries against the StaticCache's filled prefix (views of its buffers, no copy)."""
    config = cfg()
    m = build(config, seed=5)
    L, H, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    ids, mask = left_padded(config, [7, 5], 7, seed=5)
    pos = create_position_ids_from_input_ids(ids, config.pad_token_id)
    cache = StaticCache(config, 2, 8)
    gemms, updates, attn = [], [], []

    proxy = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})

    def linear(x, w, b=None):
        gemms.append((tuple(x.shape), tuple(w.shape)))
        return F.linear(x, w, b)

    def sdpa(q, k, v, **kw):
        attn.append((tuple(q.shape), k))
        return F.scaled_dot_product_attention(q, k, v, **kw)

    proxy.linear, proxy.scaled_dot_product_attention = linear, sdpa
    real_update = xstatic.cache_update

    def cache_update(kc, vc, kn, vn, positions, lengths=None):
        updates.append(tuple(kn.shape))
        return real_update(kc, vc, kn, vn, positions, lengths)

    monkeypatch.setattr(table, "F", proxy)  # the cached path's SDPA (the op table's sdpa-causal entry)
    monkeypatch.setattr(layer, "F", proxy)  # the fused layer's GEMMs
    monkeypatch.setattr(xstatic, "cache_update", cache_update)
    with torch.no_grad():
        for start, n in ((0, 4), (4, 2), (6, 1)):
            gemms.clear(), updates.clear(), attn.clear()
            sl = slice(start, start + n)
            m(
                ids[:, sl],
                attention_mask=mask[:, : start + n],
                position_ids=pos[:, sl],
                past_key_values=cache,
                use_cache=True,
            )
            assert gemms == [((2 * n, H), (3 * H, H))] * L, f"step of {n}: QKV GEMMs {gemms}"
            assert updates == [(2, heads, n, H // heads)] * L, f"step of {n}: cache_update calls {updates}"
            assert len(attn) == L
            for i, (qs, k) in enumerate(attn):
                assert qs == (2, heads, n, H // heads) and k.shape[2] == start + n
                assert k.data_ptr() == cache.keys[i].data_ptr(), "attention did not read the cache buffer itself"


def test_decoder_forward_reads_no_tensor_on_the_host(monkeypatch):
    """decoder_forward (reference ops, StaticCache) never reads a tensor value on the host (on a GPU that would be a
    device sync): every Tensor -> Python conversion is made to raise during the call."""
    config = cfg()
    m = build(config, seed=6)
    enc = m.roberta.encoder
    B, H = 2, config.hidden_size
    cache = StaticCache(config, B, 6)
    mask = torch.ones(B, 6, dtype=torch.long)
    mask[1, :2] = 0

    def no_sync(*a, **k):
        raise AssertionError("decoder_forward read a tensor on the host")

    with torch.no_grad():
        for start, n in ((0, 3), (3, 1), (4, 2)):
            x = torch.randn(B, n, H)
            with monkeypatch.context() as mp:
                for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"):
                    mp.setattr(torch.Tensor, name, no_sync)
                out, _ = fast_decode.decoder_forward(enc, x, mask[:, : start + n], cache, m.backend)
            assert out.shape == (B, n, H) and torch.isfinite(out).all()
    assert cache.get_seq_length() == 6


# -- fallbacks --------------------------------------------------------------------------------------------------------
def test_cross_attention_decoder_keeps_the_exact_path(monkeypatch, caplog, fresh_log):
    config = cfg(add_cross_attention=True)
    m = build(config, seed=7)
    ids, mask = left_padded(config, [4, 4], 4, seed=7)
    enc_states = torch.randn(2, 5, config.hidden_size)
    spy = Spy(monkeypatch)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        out = m(ids, attention_mask=mask, encoder_hidden_states=enc_states, use_cache=True)
        m(
            ids[:, :1],
            attention_mask=torch.ones(2, 5, dtype=torch.long),
            encoder_hidden_states=enc_states,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    assert (spy.decoder, spy.encoder) == (0, 0), "cross-attention must not run the fused path"
    lines = [r.getMessage() for r in caplog.records if "exact (unfused) path" in r.getMessage()]
    assert len(lines) == 1 and "cross-attention" in lines[0], f"expected one logged reason, got {lines}"
    # the same model without encoder states has no cross-attention to run: it decodes fused
    with torch.no_grad():
        m(ids, attention_mask=mask, use_cache=True)
    assert spy.decoder == 1


CACHED_FALLBACKS = {
    "output_attentions": (dict(), dict(output_attentions=True), "output_attentions"),
    "head_mask": (dict(), dict(head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0])), "head_mask"),
    "relative_key": (dict(position_embedding_type="relative_key"), dict(), "relative_key"),
}


@pytest.mark.parametrize("case", sorted(CACHED_FALLBACKS))
def test_cached_calls_the_fast_path_cannot_serve(case, monkeypatch, caplog, fresh_log):
    """Cached decoding with a feature the fused layer lacks runs the exact path (reason logged once) and returns
    exactly what the exact path returns."""
    cfg_kw, call_kw, needle = CACHED_FALLBACKS[case]
    config = cfg(**cfg_kw)
    m = build(config, seed=11)
    ids, mask = left_padded(config, [5, 3], 5, seed=11)
    pos = create_position_ids_from_input_ids(ids, config.pad_token_id)

    def run():  # a 3-token prefill and two steps into a StaticCache, the feature passed on every call
        past = StaticCache(config, 2, 5)
        logits = [
            m(
                ids[:, s:e],
                attention_mask=mask[:, :e],
                position_ids=pos[:, s:e],
                past_key_values=past,
                use_cache=True,
                **call_kw,
            ).logits
            for s, e in ((0, 3), (3, 4), (4, 5))
        ]
        return torch.cat(logits, dim=1), past

    spy = Spy(monkeypatch)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        a, past = run()
    assert spy.decoder == 0, f"{case}: the fused decoder must not run"
    lines = [r.getMessage() for r in caplog.records if "exact (unfused) path" in r.getMessage()]
    assert len(lines) == 1 and needle in lines[0], f"{case}: expected one reason mentioning {needle!r}, got {lines}"
    force_exact(monkeypatch)
    with torch.no_grad():
        b, _ = run()
    assert a.shape == b.shape == (2, 5, config.vocab_size)
    assert torch.equal(a, b), f"{case}: max err {max_err(a, b):.3g}"
    assert past.get_seq_length() == 5


def test_training_and_autograd_keep_the_exact_path(monkeypatch):
    config = cfg()
    m = build(config, seed=8)
    ids, mask = left_padded(config, [4, 2], 4, seed=8)
    spy = Spy(monkeypatch)
    out = m(ids, attention_mask=mask, use_cache=True)  # grad mode on, parameters require grad
    assert spy.decoder == 0 and isinstance(out.past_key_values, EncoderDecoderCache)
    out.logits.sum().backward()
    assert m.roberta.encoder.layer[0].attention.self.query.weight.grad is not None


# -- low precision ----------------------------------------------------------------------------------------------------
def test_bf16_incremental_two_x_rule(monkeypatch):
    """bf16 on CPU: fast incremental logits vs the fp32 truth, at most 2x the exact path's bf16 error."""
    config = cfg()
    m = build(config, seed=9)
    ids, mask = left_padded(config, LENGTHS, SEQ, seed=9)
    with torch.no_grad():
        truth = m(ids, attention_mask=mask, use_cache=False).logits
        m.to(torch.bfloat16)
        got, _ = decode(m, ids, mask, CHUNKS, past=StaticCache(config, 3, SEQ))
        force_exact(monkeypatch)
        theirs, _ = decode(m, ids, mask, CHUNKS, past=StaticCache(config, 3, SEQ))
    assert got.dtype == theirs.dtype == torch.bfloat16 and got.shape == truth.shape
    assert_lowp(got, theirs, truth, where=mask.bool(), name="bf16 incremental logits")


# -- the Triton kernels under the interpreter -------------------------------------------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_triton_kernels_decode_without_fallback(kind, monkeypatch, caplog, fresh_log):
    pytest.importorskip("triton")
    config = cfg(num_hidden_layers=2)
    m = build(config, seed=10)
    ids, mask = left_padded(config, [6, 4], 6, seed=10)
    chunks = [3, 1, 2]  # 3, 1 and 2 new queries: the kernel's decode path (<= 4); the 6-token prefill: tiled
    with torch.no_grad():
        ref, _ = decode(m, ids, mask, [6], past=make_cache(kind, config, 2, 6))  # one prefill, reference ops
        ref_inc, _ = decode(m, ids, mask, chunks, past=make_cache(kind, config, 2, 6))
        m.set_backend("triton")
        spy = Spy(monkeypatch)
        with caplog.at_level(logging.INFO, logger="xlmrxl"):
            got_pre, _ = decode(m, ids, mask, [6], past=make_cache(kind, config, 2, 6))  # 6 queries: tiled kernel
            got, past = decode(m, ids, mask, chunks, past=make_cache(kind, config, 2, 6))
    assert spy.decoder == 1 + len(chunks)
    fallbacks = [r.getMessage() for r in caplog.records if "runs the PyTorch reference" in r.getMessage()]
    assert not fallbacks, f"some ops did not run their kernel: {fallbacks}"
    assert got.shape == ref.shape and got.dtype == torch.float32 and torch.isfinite(got).all()
    real = mask.bool()
    for name, a, b in (("prefill", got_pre, ref), ("incremental", got, ref_inc), ("incremental vs prefill", got, ref)):
        err = max_err(a, b, real)
        assert err <= TOL, f"{kind} {name}: Triton kernels (interpreter) vs references max err {err:.3g}"
    assert past.get_seq_length() == 6
