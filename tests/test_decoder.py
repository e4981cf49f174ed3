"""Decoder mode vs transformers 4.56.2: causal masks, cross-attention, KV caches (ours, transformers', legacy tuples),
incremental decoding, the causal-LM loss and generation hooks. Tiny config, CPU, real tokens only."""

import pytest
import torch
from _oracle import cache_kw, hf_twin, make_inputs, max_err, out_cache, random_model, real
from conftest import tiny_config_kwargs

from xlmrxl import DynamicCache, EncoderDecoderCache, XLMRobertaXLConfig, XLMRobertaXLForCausalLM, XLMRobertaXLModel
from xlmrxl.caches import Cache
from xlmrxl.modeling import create_position_ids_from_input_ids

transformers = pytest.importorskip("transformers")
# transformers 5.x (the GPU machine's): no relative positions, no sdpa fallback to eager for attention weights, no
# to_legacy_cache, and prepare_inputs_for_generation leaves position ids to the model; those checks adapt or skip
TF5 = int(transformers.__version__.split(".")[0]) >= 5

TOL = 1e-5


def _their_kv(cache):
    """(key, value) per layer of a transformers cache, in 4.x (legacy tuples) and 5.x (layers)."""
    if hasattr(cache, "to_legacy_cache"):
        return [(kv[0], kv[1]) for kv in cache.to_legacy_cache()]
    cache = getattr(cache, "self_attention_cache", cache)
    return [(layer.keys, layer.values) for layer in cache.layers]


def cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(is_decoder=True, **kw))


def build(cls, config, seed=0):
    return random_model(cls, config, seed)


def ids_no_pad(config, batch=2, seq=8, seed=0):
    return make_inputs(config, batch=batch, seq=seq, pad=False, seed=seed)["input_ids"]


def encoder_states(batch=2, length=6, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, length, 64, generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad:
        mask[1, length - 2 :] = 0
    return states, mask


# -- full forward ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_causal_lm_parity_with_padding(impl):
    config = cfg(attn_implementation=impl)
    m = build(XLMRobertaXLForCausalLM, config)
    h = hf_twin(m)
    inputs = make_inputs(config, batch=4, seed=1)
    a, b = m(**inputs, use_cache=False), h(**inputs, use_cache=False)
    assert a.logits.shape == b.logits.shape == (4, 9, 300)
    assert max_err(a.logits, b.logits, real(inputs)) <= TOL
    a, b = m(**inputs, output_attentions=True, use_cache=False), h(**inputs, output_attentions=True, use_cache=False)
    assert max_err(a.logits, b.logits, real(inputs)) <= TOL
    for x, y in zip(a.attentions, b.attentions):
        assert max_err(x, y, real(inputs)[:, None, :, None].expand_as(x)) <= TOL
        assert torch.all(x[0].triu(1) == 0), "future keys got attention weight"


def test_causal_default_inference_path_matches():
    config = cfg()
    m = build(XLMRobertaXLForCausalLM, config)
    h = hf_twin(m)
    inputs = make_inputs(config, batch=3, seed=2, left_pad=False)
    with torch.no_grad():
        a, b = m(**inputs, use_cache=False), h(**inputs, use_cache=False)
    assert max_err(a.logits, b.logits, real(inputs)) <= TOL


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["enc_mask", "no_enc_mask"])
def test_cross_attention_parity(impl, with_mask):
    if TF5 and impl == "sdpa":
        pytest.skip("transformers 5.x's sdpa returns no attention weights (4.56.2 falls back to eager, as we do)")
    config = cfg(add_cross_attention=True, attn_implementation=impl)
    m = build(XLMRobertaXLForCausalLM, config)
    assert "roberta.encoder.layer.0.crossattention.self.query.weight" in m.state_dict()
    h = hf_twin(m)
    inputs = make_inputs(config, batch=2, fully_padded_row=False)
    enc, enc_mask = encoder_states()
    kw = dict(encoder_hidden_states=enc, use_cache=False, output_attentions=True)
    if with_mask:
        kw["encoder_attention_mask"] = enc_mask
    a, b = m(**inputs, **kw), h(**inputs, **kw)
    assert max_err(a.logits, b.logits, real(inputs)) <= TOL
    assert len(a.cross_attentions) == len(b.cross_attentions) == config.num_hidden_layers
    for x, y in zip(a.cross_attentions, b.cross_attentions):
        assert x.shape == y.shape == (2, 4, 9, 6)
        assert max_err(x, y, real(inputs)[:, None, :, None].expand_as(x)) <= TOL
    if with_mask:
        assert torch.all(a.cross_attentions[0][1, :, :, -2:] == 0)
    # without output_attentions (sdpa path when impl == "sdpa")
    kw["output_attentions"] = False
    assert max_err(m(**inputs, **kw).logits, h(**inputs, **kw).logits, real(inputs)) <= TOL


def test_model_without_cross_attention_rejects_encoder_states():
    m = build(XLMRobertaXLModel, cfg())
    enc, _ = encoder_states()
    with pytest.raises(ValueError, match="add_cross_attention=True"):
        m(ids_no_pad(m.config), encoder_hidden_states=enc)
    with pytest.raises(ValueError, match="needs is_decoder=True"):
        XLMRobertaXLModel(XLMRobertaXLConfig(**tiny_config_kwargs(add_cross_attention=True)))


# -- incremental decoding -------------------------------------------------------------------------------------------
def decode(model, ids, prefix, past=None, **kw):
    """Prefill ``prefix`` tokens then feed one token at a time; returns (per-position logits, final cache)."""
    ckw = cache_kw(model)  # transformers >= 5.24 takes the cache as `cache`
    out = model(ids[:, :prefix], attention_mask=torch.ones_like(ids[:, :prefix]), use_cache=True, **{ckw: past}, **kw)
    logits, past = [out.logits], out_cache(out)
    for t in range(prefix, ids.shape[1]):
        out = model(
            ids[:, t : t + 1],
            attention_mask=torch.ones_like(ids[:, : t + 1]),
            use_cache=True,
            **{ckw: past},
            **kw,
        )
        logits.append(out.logits)
        past = out_cache(out)
    return torch.cat(logits, dim=1), past


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_incremental_decoding_equals_full_forward_and_oracle(impl):
    config = cfg(attn_implementation=impl)
    m = build(XLMRobertaXLForCausalLM, config)
    h = hf_twin(m)
    ids = ids_no_pad(config)
    full = m(ids, use_cache=False).logits
    inc, past = decode(m, ids, prefix=5)
    assert isinstance(past, EncoderDecoderCache) and past.get_seq_length() == 8
    assert max_err(inc, full) <= TOL, "incremental != full forward"
    inc_h, past_h = decode(h, ids, prefix=5)
    assert max_err(inc, inc_h) <= TOL, "incremental != transformers' incremental"
    for (k, v), (kh, vh) in zip(past.to_legacy_cache(), _their_kv(past_h)):
        assert k.shape == kh.shape == (2, 4, 8, 16)
        assert max_err(k, kh) <= TOL and max_err(v, vh) <= TOL


def test_incremental_decoding_with_left_padding_and_generation_positions():
    config = cfg()
    m = build(XLMRobertaXLForCausalLM, config)
    h = hf_twin(m)
    ids = ids_no_pad(config, batch=3, seq=8, seed=4)
    mask = torch.ones_like(ids)
    ids[1, :3] = config.pad_token_id
    mask[1, :3] = 0
    full = m(ids, attention_mask=mask, use_cache=False).logits
    past, steps = None, []
    for t in range(5, 9):  # prefill 5 tokens, then one at a time, as generate() feeds them
        cur, cur_mask = ids[:, :t], mask[:, :t]
        a = m.prepare_inputs_for_generation(cur, past_key_values=past, attention_mask=cur_mask)
        # 5.x's hook slices the new tokens by next_sequence_length, which its generate() passes
        extra = {"next_sequence_length": t - (0 if past is None else past.get_seq_length())} if TF5 else {}
        b = h.prepare_inputs_for_generation(cur, attention_mask=cur_mask, **{cache_kw(h): past}, **extra)
        for key in ("input_ids", "attention_mask", "position_ids"):
            if TF5 and key not in b:
                continue  # 5.x leaves the position ids to the model's forward
            assert torch.equal(a[key], b[key]), key
        out = m(**a, use_cache=True)
        steps.append(out.logits[:, -1])
        past = out.past_key_values
    got = torch.stack(steps, dim=1)
    assert max_err(got, full[:, 4:8], mask[:, 4:8].bool()) <= TOL


def test_cross_attention_cache_computed_once_and_matches():
    config = cfg(add_cross_attention=True)
    m = build(XLMRobertaXLForCausalLM, config)
    h = hf_twin(m)
    ids = ids_no_pad(config)
    enc, enc_mask = encoder_states()
    kw = dict(encoder_hidden_states=enc, encoder_attention_mask=enc_mask)
    full = m(ids, use_cache=False, **kw).logits
    calls = []
    hook = m.roberta.encoder.layer[0].crossattention.self.key.register_forward_hook(lambda *a: calls.append(1))
    inc, past = decode(m, ids, prefix=4, **kw)
    hook.remove()
    assert len(calls) == 1, f"cross-attention K/V recomputed {len(calls)} times"
    assert all(past.is_updated.values()) and past.cross_attention_cache.get_seq_length() == 6
    assert max_err(inc, full) <= TOL
    inc_h, _ = decode(h, ids, prefix=4, **kw)
    assert max_err(inc, inc_h) <= TOL


def test_legacy_tuples_and_transformers_cache_objects():
    config = cfg(add_cross_attention=True)
    m = build(XLMRobertaXLForCausalLM, config)
    ids = ids_no_pad(config)
    enc, enc_mask = encoder_states()
    kw = dict(encoder_hidden_states=enc, encoder_attention_mask=enc_mask, use_cache=True)
    first = m(ids[:, :5], **kw)
    legacy = first.past_key_values.to_legacy_cache()
    assert len(legacy) == 3 and len(legacy[0]) == 4
    nxt = m(ids[:, 5:6], attention_mask=torch.ones_like(ids[:, :6]), past_key_values=legacy, **kw)
    assert isinstance(nxt.past_key_values, EncoderDecoderCache)
    full = m(ids[:, :6], use_cache=False, encoder_hidden_states=enc, encoder_attention_mask=enc_mask).logits
    assert max_err(nxt.logits[:, 0], full[:, 5]) <= TOL
    # transformers' own cache objects are driven through update()/get_seq_length() as well
    hf_cache = transformers.EncoderDecoderCache(transformers.DynamicCache(), transformers.DynamicCache())
    out = m(ids[:, :5], past_key_values=hf_cache, **kw)
    assert out.past_key_values is hf_cache and hf_cache.get_seq_length() == 5
    out = m(ids[:, 5:6], attention_mask=torch.ones_like(ids[:, :6]), past_key_values=hf_cache, **kw)
    assert max_err(out.logits[:, 0], full[:, 5]) <= TOL
    # a plain DynamicCache (ours) for a decoder without cross-attention
    m2 = build(XLMRobertaXLForCausalLM, cfg())
    cache = DynamicCache()
    m2(ids[:, :5], past_key_values=cache, use_cache=True)
    out = m2(ids[:, 5:6], past_key_values=cache, use_cache=True)
    assert out.past_key_values is cache and cache.get_seq_length() == 6
    assert max_err(out.logits[:, 0], m2(ids[:, :6], use_cache=False).logits[:, 5]) <= TOL


@pytest.mark.parametrize("pe", ["relative_key", "relative_key_query"])
def test_relative_positions_with_cache_match_oracle(pe):
    if TF5:
        pytest.skip("transformers 5.x has no relative positions (the model is always absolute)")
    config = cfg(position_embedding_type=pe)
    m = build(XLMRobertaXLForCausalLM, config)
    h = hf_twin(m)
    ids = ids_no_pad(config)
    inc, _ = decode(m, ids, prefix=1)  # one-token steps: relative distances are exact
    inc_h, _ = decode(h, ids, prefix=1)
    assert max_err(inc, inc_h) <= TOL
    assert max_err(inc, m(ids, use_cache=False).logits) <= TOL
    a, b = decode(m, ids, prefix=4)[0], decode(h, ids, prefix=4)[0]  # 4.56.2's prefill semantics, reproduced
    assert max_err(a, b) <= TOL


# -- loss, outputs, hooks -------------------------------------------------------------------------------------------
def test_causal_lm_loss_and_tuples():
    config = cfg()
    m = build(XLMRobertaXLForCausalLM, config)
    h = hf_twin(m)
    inputs = make_inputs(config, fully_padded_row=False)
    labels = inputs["input_ids"].masked_fill(~real(inputs), -100)
    a, b = m(**inputs, labels=labels), h(**inputs, labels=labels)
    assert a.loss.dtype == torch.float32 and abs(a.loss.item() - b.loss.item()) <= TOL
    assert a.past_key_values is None and b.past_key_values is None  # labels switch the cache off
    n = torch.tensor(7)
    a, b = m(**inputs, labels=labels, num_items_in_batch=n), h(**inputs, labels=labels, num_items_in_batch=n)
    assert abs(a.loss.item() - b.loss.item()) <= TOL
    ta, tb = m(**inputs, labels=labels, return_dict=False), h(**inputs, labels=labels, return_dict=False)
    assert len(ta) == len(tb) == 2
    ta, tb = m(**inputs, use_cache=True, return_dict=False), h(**inputs, use_cache=True, return_dict=False)
    assert len(ta) == len(tb) == 2 and isinstance(ta[1], EncoderDecoderCache)
    ta = m(**inputs, use_cache=True, output_hidden_states=True, return_dict=False)
    tb = h(**inputs, use_cache=True, output_hidden_states=True, return_dict=False)
    assert len(ta) == len(tb) == 3 and len(ta[2]) == len(tb[2])


def test_logits_to_keep():
    config = cfg()
    m = build(XLMRobertaXLForCausalLM, config)
    ids = ids_no_pad(config)
    full = m(ids, use_cache=False).logits
    assert max_err(m(ids, use_cache=False, logits_to_keep=1).logits, full[:, -1:]) <= TOL
    assert max_err(m(ids, use_cache=False, logits_to_keep=torch.tensor([0, 3])).logits, full[:, [0, 3]]) <= TOL


def test_generation_hooks():
    m = build(XLMRobertaXLForCausalLM, cfg())
    assert m.can_generate() and callable(m.generate)
    ids = torch.tensor([[0, 5, 6, 1]])
    assert torch.equal(create_position_ids_from_input_ids(ids, 1), torch.tensor([[2, 3, 4, 1]]))
    assert torch.equal(create_position_ids_from_input_ids(torch.tensor([[5, 6]]), 1, 3), torch.tensor([[5, 6]]))


# -- cache API ------------------------------------------------------------------------------------------------------
def test_dynamic_cache_api():
    c = DynamicCache()
    assert isinstance(c, Cache) and c.get_seq_length() == 0
    k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 4, 3, 16)
    ko, vo = c.update(k, v, 0)
    assert ko.shape == (2, 4, 3, 16) and c.get_seq_length() == 3 and c.get_seq_length(1) == 0
    k2 = torch.randn(2, 4, 1, 16)
    ko, vo = c.update(k2, k2, 0)
    assert ko.shape == (2, 4, 4, 16) and torch.equal(ko[:, :, 3:], k2) and torch.equal(c.get_layer(0)[0], ko)
    c.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(c.get_layer(0)[0][0], ko[1])
    c.crop(-1)
    assert c.get_seq_length() == 3
    c.crop(2)
    assert c.get_seq_length() == 2
    legacy = c.to_legacy_cache()
    assert DynamicCache.from_legacy_cache(legacy).get_seq_length() == 2
    c.reset()
    assert c.get_seq_length() == 0 and len(c) == 0


def test_encoder_decoder_cache_api():
    kv = [
        (torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
        for _ in range(2)
    ]
    c = EncoderDecoderCache.from_legacy_cache(kv)
    assert c.get_seq_length() == 3 and c.is_updated == {0: True, 1: True} and len(c) == 2
    assert c.cross_attention_cache.get_seq_length() == 5
    back = c.to_legacy_cache()
    assert all(torch.equal(a, b) for x, y in zip(back, kv) for a, b in zip(x, y))
    c.reorder_cache(torch.tensor([0]))
    c.crop(1)
    assert c.get_seq_length() == 1 and c.cross_attention_cache.get_seq_length() == 5
    c.reset()
    assert c.get_seq_length() == 0 and not any(c.is_updated.values())
    with pytest.raises(TypeError, match="two Cache objects"):
        EncoderDecoderCache(DynamicCache(), object())
