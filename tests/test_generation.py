"""xlmrxl.generation.generate on the tiny causal LM (CPU, fp32): greedy tokens equal a greedy loop over
transformers 4.56.2's twin model run with its own cache and the same (padding-index) positions; left-padded batches
equal per-row unpadded runs; static and dynamic caches agree; beam search returns its best hypothesis (exact search
when the beam covers the vocabulary); sampling is reproducible; streaming and end-token handling."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from _oracle import cache_kw, out_cache, random_model
from conftest import tiny_config_kwargs

from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLForCausalLM
from xlmrxl.generation import GenerateOutput, _warp, generate
from xlmrxl.modeling import create_position_ids_from_input_ids

NO_EOS = -1  # eos_token_id=-1: never stop early (random weights would hit </s> at random steps)


def cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(is_decoder=True, **kw))


def build(config, seed=0):
    return random_model(XLMRobertaXLForCausalLM, config, seed, embed_std=0.5)  # sharper logits: fewer ties


@pytest.fixture(scope="module")
def model():
    return build(cfg())


def prompts(config, lengths, seed=0):
    """Left-padded random prompts (real ids never equal the pad id)."""
    g = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.randint(3, config.vocab_size, (len(lengths), seq), generator=g)
    for r, n in enumerate(lengths):
        ids[r, : seq - n] = config.pad_token_id
    return ids


def hf_greedy(model, ids, steps):
    """The oracle: transformers 4.56.2's model, its own DynamicCache, greedy, positions by the padding-index rule
    (the prompt's come from forward itself; each new token gets its row's next position explicitly)."""
    from _oracle import hf_twin

    transformers = pytest.importorskip("transformers")
    twin = hf_twin(model)
    pad = model.config.pad_token_id
    mask = (ids != pad).long()
    next_pos = create_position_ids_from_input_ids(ids, pad).max(dim=1).values + 1
    out_ids = ids
    with torch.no_grad():
        kw = cache_kw(twin)  # transformers >= 5.24 takes the cache as `cache`
        out = twin(input_ids=ids, attention_mask=mask, use_cache=True, **{kw: transformers.DynamicCache()})
        for i in range(steps):
            token = out.logits[:, -1].argmax(dim=-1)
            out_ids = torch.cat([out_ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = twin(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=(next_pos + i)[:, None],
                use_cache=True,
                **{kw: out_cache(out)},
            )
    return out_ids


def full_logprob(model, seq, prompt_len):
    """Sum of next-token log-probs of seq[prompt_len:] under a full forward with generation's positions."""
    pad = model.config.pad_token_id
    prompt = seq[:, :prompt_len]
    pos = create_position_ids_from_input_ids(prompt, pad)
    nxt = pos.max(dim=1, keepdim=True).values + 1
    pos = torch.cat([pos, nxt + torch.arange(seq.shape[1] - prompt_len)], dim=1)
    mask = torch.cat([(prompt != pad).long(), torch.ones_like(seq[:, prompt_len:])], dim=1)
    with torch.no_grad():
        logp = F.log_softmax(model(seq, attention_mask=mask, position_ids=pos, use_cache=False).logits.float(), -1)
    picked = logp[:, prompt_len - 1 : -1].gather(-1, seq[:, prompt_len:, None]).squeeze(-1)
    return picked.sum(dim=1)


# -- greedy ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_greedy_matches_transformers_loop(model, cache):
    ids = prompts(model.config, [7, 4, 2], seed=1)
    ours = generate(model, ids, max_new_tokens=8, eos_token_id=NO_EOS, cache=cache)
    theirs = hf_greedy(model, ids, 8)
    assert ours.shape == theirs.shape == (3, 15) and ours.dtype == torch.long
    assert torch.equal(ours, theirs), f"tokens differ:\nours   {ours[:, 7:].tolist()}\ntheirs {theirs[:, 7:].tolist()}"


def test_left_padded_batch_equals_unpadded_rows(model):
    pad = model.config.pad_token_id
    ids = prompts(model.config, [6, 3, 1, 5], seed=2)
    batch = generate(model, ids, max_new_tokens=6, eos_token_id=NO_EOS)
    for r in range(ids.shape[0]):
        row = ids[r : r + 1][:, ids[r] != pad]
        alone = generate(model, row, max_new_tokens=6, eos_token_id=NO_EOS)
        assert torch.equal(alone[0, row.shape[1] :], batch[r, ids.shape[1] :]), f"row {r} differs when padded"


def test_static_equals_dynamic_and_model_method(model):
    ids = prompts(model.config, [5, 2], seed=3)
    a = generate(model, ids, max_new_tokens=5, eos_token_id=NO_EOS, cache="static")
    b = generate(model, ids, max_new_tokens=5, eos_token_id=NO_EOS, cache="dynamic")
    c = model.generate(ids, max_new_tokens=5, eos_token_id=NO_EOS)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_generated_logits_equal_full_forward(model):
    """The scores of each step equal a plain forward over the final sequence (the padding-index rule)."""
    ids = prompts(model.config, [6, 6], seed=4)
    out = generate(model, ids, max_new_tokens=4, eos_token_id=NO_EOS, return_dict_in_generate=True, output_scores=True)
    assert isinstance(out, GenerateOutput) and len(out.scores) == 4
    seq = out.sequences
    assert not (seq[:, 6:] == model.config.pad_token_id).any(), "a generated pad id would change forward's positions"
    with torch.no_grad():
        full = model(seq, use_cache=False).logits.float()
    for i, step_scores in enumerate(out.scores):
        e = (step_scores - full[:, 5 + i]).abs().max().item()
        assert e <= 1e-5, f"step {i}: generate's logits vs full forward max error {e:.3g}"


def test_end_token_stops_rows_and_pads(model):
    ids = prompts(model.config, [5, 3], seed=5)
    free = generate(model, ids, max_new_tokens=6, eos_token_id=NO_EOS)
    eos = int(free[0, 5 + 1])  # row 0's second new token becomes the end token
    out = generate(model, ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=1)
    assert torch.equal(out[0, :7], free[0, :7])
    assert (out[0, 7:] == 1).all(), f"row 0 must be padded after its end token, got {out[0].tolist()}"
    row1_end = (free[1, 5:] == eos).nonzero()
    stop = int(row1_end[0]) + 1 if len(row1_end) else 6
    assert torch.equal(out[1, 5 : 5 + stop], free[1, 5 : 5 + stop])
    both = generate(model, ids[:1], max_new_tokens=6, eos_token_id=eos)
    assert both.shape == (1, 7), "generation must stop once every row has ended"
    held = generate(model, ids[:1], max_new_tokens=6, eos_token_id=eos, min_new_tokens=3)
    assert held.shape[1] >= 5 + 3 and (held[0, 5:8] != eos).all(), "min_new_tokens must hold the end token back"


# -- sampling ----------------------------------------------------------------------------------------------------------
def test_sampling_reproducible_with_seed(model):
    ids = prompts(model.config, [4, 2], seed=6)
    kw = dict(max_new_tokens=6, do_sample=True, temperature=1.3, top_k=50, top_p=0.95, eos_token_id=NO_EOS)
    a = generate(model, ids, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, ids, generator=torch.Generator().manual_seed(7), **kw)
    c = generate(model, ids, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b), "same seed, different samples"
    assert not torch.equal(a, c), "different seeds gave identical samples (vanishingly unlikely)"
    greedy = generate(model, ids, max_new_tokens=6, eos_token_id=NO_EOS)
    top1 = generate(
        model,
        ids,
        max_new_tokens=6,
        do_sample=True,
        top_k=1,
        eos_token_id=NO_EOS,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(top1, greedy), "top_k=1 sampling must be greedy"
    n = generate(model, ids, num_return_sequences=3, generator=torch.Generator().manual_seed(7), **kw)
    assert n.shape == (6, 10) and torch.equal(n[0, :4], n[2, :4])


def test_warpers():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_warp(scores, 1.0, None, 0.75))
    assert kept.tolist() == [[True, True, False, False]], "top_p=0.75 keeps the smallest set reaching 0.75"
    kept = torch.isfinite(_warp(scores, 1.0, 3, None))
    assert kept.tolist() == [[True, True, True, False]]
    assert torch.isfinite(_warp(scores, 1.0, None, 1e-9)).sum() == 1, "top_p keeps at least one token"
    assert torch.allclose(_warp(scores, 2.0, None, None), scores / 2)


# -- beam search -------------------------------------------------------------------------------------------------------
def test_beam_search_returns_its_best_hypothesis(model):
    ids = prompts(model.config, [5, 3], seed=9)
    out = generate(
        model,
        ids,
        max_new_tokens=4,
        num_beams=2,
        num_return_sequences=2,
        eos_token_id=NO_EOS,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape == (4, 9) and out.sequences_scores.shape == (4,)
    recomputed = full_logprob(model, out.sequences, 5) / 4  # length_penalty=1: divided by 4 new tokens
    e = (recomputed - out.sequences_scores).abs().max().item()
    assert e <= 1e-4, f"beam scores vs full-forward log-probs max error {e:.3g}"
    s = out.sequences_scores.view(2, 2)
    assert (s[:, 0] >= s[:, 1]).all(), "the first returned sequence must be the best-scoring one"
    greedy = generate(model, ids, max_new_tokens=4, eos_token_id=NO_EOS)
    assert torch.equal(generate(model, ids, max_new_tokens=4, num_beams=1, eos_token_id=NO_EOS), greedy)
    assert torch.equal(generate(model, ids, max_new_tokens=4, num_beams=2, eos_token_id=NO_EOS), out.sequences[::2]), (
        "num_return_sequences=1 must return each row's best hypothesis"
    )


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_beam_search_is_exact_when_the_beam_covers_the_vocab(cache):
    """vocab 16, 2 new tokens, 16 beams: beam search must find the best of all 256 continuations (brute force),
    end-token hypotheses included."""
    config = cfg(vocab_size=16)
    m = build(config, seed=11)
    ids = prompts(config, [4, 2], seed=11)
    eos = 2
    out = generate(m, ids, max_new_tokens=2, num_beams=16, eos_token_id=eos, cache=cache, return_dict_in_generate=True)
    for r in range(2):
        # every first token a, in one batch: log p(a) and log p(b | a) from one forward of prompt + a
        seqs = torch.cat([ids[r : r + 1].expand(16, -1), torch.arange(16)[:, None]], dim=1)
        pos = create_position_ids_from_input_ids(seqs[:, :4], 1)
        pos = torch.cat([pos, pos.max(dim=1, keepdim=True).values + 1], dim=1)
        mask = torch.cat([(seqs[:, :4] != 1).long(), torch.ones(16, 1, dtype=torch.long)], dim=1)
        with torch.no_grad():
            logp = F.log_softmax(m(seqs, attention_mask=mask, position_ids=pos, use_cache=False).logits.float(), -1)
        first, second = logp[0, 3], logp[:, 4]
        best, best_seq = -float("inf"), None
        for a, b in itertools.product(range(16), repeat=2):
            toks = [a] if a == eos else [a, b]
            score = float(first[a]) if a == eos else float(first[a] + second[a, b]) / 2
            if score > best:
                best, best_seq = score, toks
        got = out.sequences[r, 4:].tolist()
        got = got[:1] if got[0] == eos else got
        assert got == best_seq, f"row {r}: beam found {got}, brute force {best_seq} ({best:.4f})"
        assert abs(float(out.sequences_scores[r]) - best) <= 1e-4


def test_beam_search_reorders_the_static_cache(model, monkeypatch):
    import xlmrxl.caches.static as sc

    calls = []
    real = sc.cache_reorder
    monkeypatch.setattr(sc, "cache_reorder", lambda *a, **k: (calls.append(a[2]), real(*a, **k)))
    generate(model, prompts(model.config, [3], seed=12), max_new_tokens=3, num_beams=3, eos_token_id=NO_EOS)
    assert len(calls) == 2 * model.config.num_hidden_layers, f"expected a reorder per layer and step, got {len(calls)}"


# -- streaming, limits, errors -----------------------------------------------------------------------------------------
def test_streamer_object_and_callable(model):
    ids = prompts(model.config, [4], seed=13)

    class Recorder:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            self.ended = True

    rec, seen = Recorder(), []
    out = generate(model, ids, max_new_tokens=5, eos_token_id=NO_EOS, streamer=rec)
    assert rec.ended and torch.equal(rec.chunks[0], ids), "put() gets the prompt first"
    assert torch.equal(torch.stack(rec.chunks[1:], dim=1), out[:, 4:])
    generate(model, ids, max_new_tokens=5, eos_token_id=NO_EOS, streamer=seen.append)
    assert torch.equal(torch.stack(seen, dim=1), out[:, 4:])


def test_argument_errors(model):
    ids = prompts(model.config, [3], seed=14)
    # 3 real prompt tokens take positions 2..4; new tokens 5..65; 65 = max_position_embeddings - 1 is the last
    with pytest.raises(ValueError, match=r"position ids reach 66 > 65 \(max_position_embeddings=66\)"):
        generate(model, ids, max_new_tokens=62)
    assert generate(model, ids, max_new_tokens=61, eos_token_id=NO_EOS).shape == (1, 64)  # exactly at the limit
    assert torch.equal(generate(model, ids, max_new_tokens=0), ids)
    with pytest.raises(ValueError, match="streamer cannot be used with beam search"):
        generate(model, ids, num_beams=2, streamer=print)
    with pytest.raises(NotImplementedError, match="beam sampling"):
        generate(model, ids, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="cache must be 'static' or 'dynamic', got 'paged'"):
        generate(model, ids, cache="paged")
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        generate(model, ids, do_sample=True, top_p=0.0)
    encoder = XLMRobertaXLForCausalLM(XLMRobertaXLConfig(**tiny_config_kwargs()))
    with pytest.raises(ValueError, match="config.is_decoder is False"):
        generate(encoder, ids)


def test_cross_attention_generation_static_equals_dynamic():
    config = cfg(add_cross_attention=True)
    m = build(config, seed=15)
    ids = prompts(config, [4, 2], seed=15)
    enc = torch.randn(2, 5, config.hidden_size, generator=torch.Generator().manual_seed(15))
    enc_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    kw = dict(max_new_tokens=5, eos_token_id=NO_EOS, encoder_hidden_states=enc, encoder_attention_mask=enc_mask)
    a = generate(m, ids, cache="static", **kw)
    b = generate(m, ids, cache="dynamic", **kw)
    assert torch.equal(a, b)
    beams = generate(m, ids, cache="static", num_beams=2, **kw)
    assert beams.shape == (2, 9)
