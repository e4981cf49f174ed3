"""xlmrxl.StaticCache: the Cache contract, its limits, and incremental decoding equal to a full forward (tiny model,
CPU, fp32 <= 1e-5) with StaticCache and DynamicCache, padded batches and cross-attention included."""

import pytest
import torch
from _oracle import left_padded, random_model
from conftest import tiny_config_kwargs

from xlmrxl import DynamicCache, EncoderDecoderCache, StaticCache, XLMRobertaXLConfig, XLMRobertaXLForCausalLM
from xlmrxl.caches import Cache
from xlmrxl.modeling import create_position_ids_from_input_ids

TOL = 1e-5


def cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(is_decoder=True, **kw))


def build(config, seed=0):
    return random_model(XLMRobertaXLForCausalLM, config, seed)


def positions(ids, config):
    """The padding-index rule over the whole sequence. With left padding, a step's default positions (cumsum of
    the step + cached length) would count the cached pads, so steps pass the full-sequence ones explicitly."""
    return create_position_ids_from_input_ids(ids, config.pad_token_id)


def err(a, b, where=None):
    assert a.shape == b.shape, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    d = (a.float() - b.float()).abs()
    return float((d[where] if where is not None else d).max())


def make_cache(kind, config, batch, max_length):
    if kind == "static":
        return StaticCache(config, batch, max_length)
    return DynamicCache()


# -- incremental decoding == full forward ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [True, False], ids=["left_padded", "unpadded"])
def test_incremental_equals_full_forward(kind, impl, padded):
    config = cfg(attn_implementation=impl)
    m = build(config)
    ids, mask = left_padded(config, [10, 7, 4] if padded else [10, 10, 10], seq=10, seed=1)
    with torch.no_grad():
        full = m(ids, attention_mask=mask, use_cache=False).logits
        cache = make_cache(kind, config, 3, 12)
        pos = positions(ids, config)
        out = m(ids[:, :5], attention_mask=mask[:, :5], past_key_values=cache, use_cache=True)
        assert out.past_key_values is cache
        steps = [out.logits]
        for t in range(5, 10):
            explicit = pos[:, t : t + 1] if padded else None  # unpadded: the model's default (cumsum + past)
            out = m(
                ids[:, t : t + 1],
                attention_mask=mask[:, : t + 1],
                position_ids=explicit,
                past_key_values=cache,
                use_cache=True,
            )
            steps.append(out.logits)
    inc = torch.cat(steps, dim=1)
    assert inc.shape == full.shape and inc.dtype == full.dtype
    e = err(inc, full, mask.bool())
    assert e <= TOL, f"{kind}/{impl}: incremental vs full forward max error {e:.3g}"
    assert cache.get_seq_length() == 10


def test_static_matches_dynamic_chunked():
    """Prefill, a 3-token chunk, then single tokens: StaticCache and DynamicCache give the same logits."""
    config = cfg()
    m = build(config, seed=2)
    ids, mask = left_padded(config, [9, 9], seq=9, seed=2)
    outs = {}
    with torch.no_grad():
        for kind in ("static", "dynamic"):
            cache = make_cache(kind, config, 2, 9)
            pieces = []
            for a, b in ((0, 4), (4, 7), (7, 8), (8, 9)):
                pieces.append(m(ids[:, a:b], attention_mask=mask[:, :b], past_key_values=cache, use_cache=True).logits)
            outs[kind] = torch.cat(pieces, dim=1)
    e = err(outs["static"], outs["dynamic"])
    assert e <= TOL, f"static vs dynamic max error {e:.3g}"


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_cross_attention_decoder_with_encoder_decoder_cache(kind):
    config = cfg(add_cross_attention=True)
    m = build(config, seed=3)
    ids, mask = left_padded(config, [8, 6], seq=8, seed=3)
    g = torch.Generator().manual_seed(3)
    enc = torch.randn(2, 5, config.hidden_size, generator=g)
    enc_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    kw = dict(encoder_hidden_states=enc, encoder_attention_mask=enc_mask)
    with torch.no_grad():
        full = m(ids, attention_mask=mask, use_cache=False, **kw).logits
        if kind == "static":
            cache = EncoderDecoderCache(StaticCache(config, 2, 8), StaticCache(config, 2, 5))
        else:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        pos = positions(ids, config)
        steps = [m(ids[:, :3], attention_mask=mask[:, :3], past_key_values=cache, use_cache=True, **kw).logits]
        for t in range(3, 8):
            steps.append(
                m(
                    ids[:, t : t + 1],
                    attention_mask=mask[:, : t + 1],
                    position_ids=pos[:, t : t + 1],
                    past_key_values=cache,
                    use_cache=True,
                    **kw,
                ).logits
            )
    inc = torch.cat(steps, dim=1)
    e = err(inc, full, mask.bool())
    assert e <= TOL, f"cross-attention {kind}: incremental vs full max error {e:.3g}"
    assert cache.get_seq_length() == 8
    assert cache.cross_attention_cache.get_seq_length(0) == 5, "encoder K/V must be stored once, not per step"


# -- the Cache contract ----------------------------------------------------------------------------------------------
def _states(B, H, T, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, D, generator=g).to(dtype), torch.randn(B, H, T, D, generator=g).to(dtype)


def test_update_returns_filled_prefix_views():
    config = cfg()
    cache = StaticCache(config, batch_size=2, max_length=7)
    assert isinstance(cache, Cache) and len(cache) == 3 and cache.get_max_cache_shape() == 7
    assert cache.max_batch_size == 2 and cache.max_cache_len == 7
    assert cache.get_seq_length() == 0
    k1, v1 = _states(2, 4, 3, 16, seed=1)
    k, v = cache.update(k1, v1, 0)
    assert k.shape == v.shape == (2, 4, 3, 16) and k.dtype == torch.float32
    assert torch.equal(k, k1) and torch.equal(v, v1)
    k2, v2 = _states(2, 4, 2, 16, seed=2)
    k, v = cache.update(k2.transpose(1, 2).contiguous().transpose(1, 2), v2, 0)  # strided states, as the model's
    assert k.shape == (2, 4, 5, 16)
    assert torch.equal(k, torch.cat([k1, k2], dim=2)) and torch.equal(v, torch.cat([v1, v2], dim=2))
    assert k.data_ptr() == cache.keys[0].data_ptr(), "update must return views of the buffer, not copies"
    assert cache.get_seq_length(0) == 5 and cache.get_seq_length(1) == 0
    gk, gv = cache.get_layer(0)
    assert torch.equal(gk, k) and torch.equal(gv, v)
    assert torch.count_nonzero(cache.keys[0][:, :, 5:]) == 0, "slots after the filled prefix were written"
    with pytest.raises(KeyError, match="layer 1 has nothing cached"):
        cache.get_layer(1)


def test_eager_and_lazy_allocation():
    config = cfg()
    eager = StaticCache(config, 2, 6, dtype=torch.bfloat16, device="cpu")
    assert eager.keys[0].shape == (2, 4, 6, 16) and eager.keys[0].dtype == torch.bfloat16
    k, v = _states(2, 4, 1, 16)
    with pytest.raises(TypeError, match="holds torch.bfloat16 on cpu but got torch.float32"):
        eager.update(k, v, 0)
    lazy = StaticCache(config, 2, 6)
    assert lazy.keys[0] is None
    lazy.update(k.half(), v.half(), 2)
    assert lazy.keys[2].dtype == torch.float16 and lazy.keys[0] is None


def test_limits_and_bad_states():
    config = cfg()
    cache = StaticCache(config, 2, 4)
    k, v = _states(2, 4, 3, 16)
    cache.update(k, v, 0)
    before = cache.keys[0].clone()
    with pytest.raises(
        ValueError,
        match=r"StaticCache is full: layer 0 holds 3 tokens and got 2 more, but "
        r"max_length=4; allocate StaticCache\(\.\.\., max_length>=5\)",
    ):
        cache.update(*_states(2, 4, 2, 16), 0)
    assert torch.equal(cache.keys[0], before) and cache.get_seq_length() == 3, "a refused update changed the cache"
    with pytest.raises(
        ValueError,
        match=r"\(batch_size, heads, head_dim\) = \(2, 4, 16\) but layer 1 got states "
        r"of shape \(3, 4, 1, 16\)",
    ):
        cache.update(*_states(3, 4, 1, 16), 1)
    with pytest.raises(IndexError, match="layer_idx 3 is out of range: this StaticCache has 3 layers"):
        cache.update(k, v, 3)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        StaticCache(config, 0, 4)
    with pytest.raises(ValueError, match="max_length must be a positive int, got None"):
        StaticCache(config, 1)


def test_reorder_crop_reset():
    config = cfg()
    static, dynamic = StaticCache(config, 3, 8), DynamicCache()
    for layer in range(3):
        for step in range(2):
            k, v = _states(3, 4, 2, 16, seed=10 * layer + step)
            static.update(k, v, layer)
            dynamic.update(k, v, layer)
    beam_idx = torch.tensor([2, 0, 0])
    static.reorder_cache(beam_idx)
    dynamic.reorder_cache(beam_idx)
    for layer in range(3):
        for a, b in zip(static.get_layer(layer), dynamic.get_layer(layer)):
            assert torch.equal(a, b), f"reorder: layer {layer} differs from DynamicCache, max error {err(a, b):.3g}"
    static.crop(3)
    dynamic.crop(3)
    assert static.get_seq_length() == 3
    assert torch.equal(static.get_layer(1)[0], dynamic.get_layer(1)[0])
    assert torch.count_nonzero(static.keys[1][:, :, 3:]) == 0, "crop must zero the dropped slots"
    static.crop(-1)
    assert static.get_seq_length() == 2
    static.crop(10)  # longer than what is cached: no-op
    assert static.get_seq_length() == 2
    static.reset()
    assert static.get_seq_length() == 0 and torch.count_nonzero(static.keys[0]) == 0
    assert static.to_legacy_cache() == ()


def test_continue_after_crop_equals_fresh_decode():
    """Crop back to a prefix and decode other tokens: same logits as a cache that never saw the dropped ones."""
    config = cfg()
    m = build(config, seed=4)
    ids, mask = left_padded(config, [6, 6], seq=6, seed=4)
    other, _ = left_padded(config, [2, 2], seq=2, seed=5)
    with torch.no_grad():
        cache = StaticCache(config, 2, 8)
        m(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache.crop(4)
        a = m(other, attention_mask=torch.ones(2, 6, dtype=torch.long), past_key_values=cache, use_cache=True).logits
        fresh = StaticCache(config, 2, 8)
        m(ids[:, :4], attention_mask=mask[:, :4], past_key_values=fresh, use_cache=True)
        b = m(other, attention_mask=torch.ones(2, 6, dtype=torch.long), past_key_values=fresh, use_cache=True).logits
    assert torch.equal(a, b), f"after crop: max error {err(a, b):.3g}"
