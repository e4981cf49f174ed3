"""``xlmrxl.accelerate`` on transformers 4.56.2 models, and the ``from_transformers`` / ``to_transformers`` bridge.

For every head: the accelerated model is the same object, returns transformers' output types, takes the fast path,
and gives the outputs it gave before acceleration (fp32, real tokens, <= 1e-5) with the references and (marked
``triton``) with the kernels under the interpreter. ``pipeline("fill-mask")`` gives the same top-k. Fallbacks run
transformers' own code (bit-identical results) with one logged reason. The conversions share storage both ways.
"""

import logging
import sys

import pytest
import torch
from _oracle import HEADS, EncoderForwardSpy, FastPathSpy, cache_kw, out_cache, randomize
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import accelerate, deaccelerate, from_transformers, is_accelerated, quantization, to_transformers

transformers = pytest.importorskip("transformers")
TF5 = int(transformers.__version__.split(".")[0]) >= 5  # the GPU machine runs 5.x: no head_mask / relative positions

TOL = 1e-5


def _hf(head, attn="sdpa", **overrides):
    kw = tiny_config_kwargs(**overrides)
    if head == "XLMRobertaXLForCausalLM":
        kw.setdefault("is_decoder", True)
    cfg = transformers.XLMRobertaXLConfig(**kw)
    cfg._attn_implementation = attn
    model = getattr(transformers, head)(cfg).eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attn)
    return randomize(model)


def _inputs(head, batch=4, seq=9, vocab=300):
    ids = torch.randint(3, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 6:] = 0  # right padding
    mask[1, :] = 0  # fully padded row
    mask[2, 1:] = 0  # length 1
    mask[3, :2] = 0  # left padding
    ids[mask == 0] = 1
    if head == "XLMRobertaXLForMultipleChoice":
        return ids.view(2, 2, seq), mask.view(2, 2, seq)
    return ids, mask


def _extra(head):
    return {"use_cache": False} if head == "XLMRobertaXLForCausalLM" else {}


def _keep(t, mask):
    """Where ``t`` depends on real tokens only (see tests/test_fast_path.py)."""
    if tuple(t.shape[: mask.dim()]) == tuple(mask.shape):
        return mask.bool()
    flat = mask.reshape(-1, mask.shape[-1])  # multiple choice runs the backbone on (B*C, S)
    if t.dim() >= 2 and tuple(t.shape[:2]) == tuple(flat.shape):
        return flat.bool()
    first = mask[..., 0].bool()
    return first.reshape(first.shape + (1,) * (t.dim() - first.dim())).expand(t.shape)


def _compare(before, after, mask):
    assert type(before) is type(after), f"output type {type(after).__name__} != {type(before).__name__}"
    assert list(before.keys()) == list(after.keys()), f"fields {list(after.keys())} != {list(before.keys())}"
    worst = 0.0
    for k in before.keys():
        a, b = before[k], after[k]
        pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
        for x, y in pairs:
            assert x.shape == y.shape and x.dtype == y.dtype, f"{k}: {tuple(y.shape)} {y.dtype} vs {tuple(x.shape)}"
            keep = _keep(x, mask)
            if keep.any():
                worst = max(worst, (x - y)[keep].abs().max().item())
    return worst


# -- every head, references ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
def test_accelerate_every_head(head, monkeypatch):
    torch.manual_seed(HEADS.index(head))
    hf = _hf(head)
    ids, mask = _inputs(head)
    with torch.no_grad():
        before = hf(ids, attention_mask=mask, output_hidden_states=True, **_extra(head))
    out = accelerate(hf, backend="reference")
    assert out is hf, "accelerate must return the same object"
    assert is_accelerated(hf)
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        after = hf(ids, attention_mask=mask, output_hidden_states=True, **_extra(head))
        plain = hf(ids, attention_mask=mask, return_dict=False, **_extra(head))
    # rows 1 and 3 have padding at position 0, from which the classification heads compute their logits: those heads
    # take the exact path for this batch (tests/test_padded_reads.py), the others the fast path
    reads_first = head in ("XLMRobertaXLForSequenceClassification", "XLMRobertaXLForMultipleChoice")
    assert spy.calls == (0 if reads_first else 2), "the accelerated model did not take the expected path"
    err = _compare(before, after, mask)
    assert err <= TOL, f"{head}: accelerated vs original max err {err:.3g}"
    assert isinstance(plain, tuple) and torch.equal(plain[0], after[0]), "return_dict=False must give the tuple"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_accelerate_attn_implementations_and_no_padding(attn, monkeypatch):
    torch.manual_seed(11)
    hf = _hf("XLMRobertaXLForMaskedLM", attn=attn)
    ids, mask = _inputs("XLMRobertaXLForMaskedLM")
    full = torch.ones_like(mask)
    with torch.no_grad():
        before = [hf(ids, attention_mask=mask).logits, hf(ids, attention_mask=full).logits, hf(ids).logits]
    accelerate(hf, backend="reference")
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        after = [hf(ids, attention_mask=mask).logits, hf(ids, attention_mask=full).logits, hf(ids).logits]
    assert spy.calls == 3
    for b, a, m in zip(before, after, (mask, full, full)):
        err = (a - b)[m.bool()].abs().max().item()
        assert err <= TOL, f"{attn}: max err {err:.3g}"


def test_encoder_called_directly_with_4d_masks(monkeypatch):
    """Without the model-level 2D mask, the padding mask is read back from transformers' expanded 4D masks."""
    torch.manual_seed(12)
    hf = _hf("XLMRobertaXLModel", attn="eager")
    ids, mask = _inputs("XLMRobertaXLModel")
    enc = hf.encoder
    with torch.no_grad():
        emb = hf.embeddings(input_ids=ids)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # (B, 1, 1, S) 0 / min
        square = additive.expand(4, 1, 9, 9)
        ref = enc(emb, attention_mask=square).last_hidden_state
        accelerate(hf, backend="reference")
        spy = EncoderForwardSpy(monkeypatch)
        outs = [enc(emb, attention_mask=m).last_hidden_state for m in (additive, square, square == 0, mask)]
        assert spy.calls == 4
        custom = square.clone()
        custom[0, 0, 0, 0] = torch.finfo(custom.dtype).min  # not a padding mask any more
        enc(emb, attention_mask=custom)
        assert spy.calls == 4, "a custom 4D mask must run transformers' code"
    for o in outs:
        err = (o - ref)[mask.bool()].abs().max().item()
        assert err <= TOL, f"direct encoder call max err {err:.3g}"


# -- fill-mask pipeline ------------------------------------------------------------------------------------------------
def test_fill_mask_pipeline_same_topk(spm_dir, monkeypatch):
    tok = transformers.XLMRobertaTokenizer(vocab_file=str(spm_dir / "sentencepiece.bpe.model"))
    torch.manual_seed(13)
    hf = _hf("XLMRobertaXLForMaskedLM", vocab_size=len(tok) + 6)
    texts = [
        f"the weather is {tok.mask_token} today",
        f"{tok.mask_token} is a word",
        f"a longer sentence that has more words in it and a {tok.mask_token} near the end",
    ]
    pipe = transformers.pipeline("fill-mask", model=hf, tokenizer=tok, top_k=5)
    before = pipe(texts, batch_size=3)
    accelerate(hf, backend="reference")
    spy = EncoderForwardSpy(monkeypatch)
    after = transformers.pipeline("fill-mask", model=hf, tokenizer=tok, top_k=5)(texts, batch_size=3)
    assert spy.calls >= 1, "the pipeline did not take the fast path"
    for b, a in zip(before, after):
        assert [r["token"] for r in a] == [r["token"] for r in b], f"top-k changed: {a} vs {b}"
        err = max(abs(x["score"] - y["score"]) for x, y in zip(a, b))
        assert err <= 1e-5, f"scores moved by {err:.3g}"


# -- fallbacks -------------------------------------------------------------------------------------------------------
FALLBACKS = {
    "output_attentions": (dict(), dict(output_attentions=True), "output_attentions"),
    "head_mask": (dict(), dict(head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0])), "head_mask"),
    "relative_key_query": (dict(position_embedding_type="relative_key_query"), dict(), "relative_key_query"),
    "training_dropout": (dict(), dict(), "dropout"),
    "autograd": (dict(), dict(), "autograd"),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_fallbacks_run_transformers_code(case, monkeypatch, caplog, fresh_log):
    cfg_kw, call_kw, needle = FALLBACKS[case]
    if TF5 and case == "relative_key_query":
        pytest.skip("transformers 5.x has no relative positions (the model is always absolute)")
    head = "XLMRobertaXLForMaskedLM"
    torch.manual_seed(14)
    hf = _hf(head, attn="eager" if case == "output_attentions" else "sdpa", **cfg_kw)
    ids, mask = _inputs(head)
    if case == "training_dropout":
        hf.train()
    ctx = torch.enable_grad if case == "autograd" else torch.no_grad

    def run():
        torch.manual_seed(0)
        with ctx():
            return hf(ids, attention_mask=mask, **call_kw)

    before = run()
    accelerate(hf, backend="reference")
    spy = EncoderForwardSpy(monkeypatch)
    with caplog.at_level(logging.INFO, logger="xlmrxl"):
        after = run()
        run()
    assert spy.calls == 0, f"{case}: the fast path must not run"
    assert torch.equal(before.logits, after.logits), f"{case}: the fallback must be transformers' own result"
    if case == "output_attentions":
        assert len(after.attentions) == 3 and after.attentions[0].shape == (4, 4, 9, 9)
    lines = [
        r.getMessage()
        for r in caplog.records
        if "exact (unfused) path" in r.getMessage() or "runs transformers' code" in r.getMessage()
    ]
    assert len(lines) == 1, f"{case}: expected one logged reason, got {lines}"
    assert needle in lines[0], f"{case}: reason {lines[0]!r} does not mention {needle!r}"


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.triton)])
def test_cached_decoding_matches_transformers(backend, monkeypatch, caplog, fresh_log):
    """Causal LM with a KV cache: a prefill (with left padding) then single-token steps, through
    ``xlmrxl.fast.decode.decoder_forward`` (fused QKV, cache.update, backend attention with causal=True), equal to
    transformers' own incremental decoding on real tokens."""
    torch.manual_seed(21)
    hf = _hf("XLMRobertaXLForCausalLM", num_hidden_layers=2)
    ids, mask = _inputs("XLMRobertaXLForCausalLM")
    mask[1, :5] = 1  # no fully padded row here: decoding appends real tokens to every row
    ids[1, :5] = torch.randint(3, 300, (5,))

    def decode():
        outs = []
        with torch.no_grad():
            out = hf(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
            outs.append(out.logits)
            pkv = out_cache(out)
            for t in range(5, 9):
                step = torch.full((4, 1), 7 + t)
                out = hf(
                    step,
                    attention_mask=torch.cat([mask[:, :5], torch.ones(4, t - 4, dtype=mask.dtype)], 1),
                    use_cache=True,
                    **{cache_kw(hf): pkv},  # transformers >= 5.24 takes the cache as `cache`
                )
                outs.append(out.logits)
                pkv = out_cache(out)
        return outs, pkv

    before, pkv_before = decode()
    accelerate(hf, backend=backend)
    spy = FastPathSpy(monkeypatch)
    with caplog.at_level(logging.INFO, logger="xlmrxl"):
        after, pkv_after = decode()
    assert spy.decoder == 5, "prefill and every step must take the cached fast path"
    if backend == "triton":
        fallbacks = [r.getMessage() for r in caplog.records if "runs the PyTorch reference" in r.getMessage()]
        assert not fallbacks, f"some ops did not run their kernel: {fallbacks}"
    assert type(pkv_after) is type(pkv_before) and pkv_after.get_seq_length() == 9
    prefill_keep = mask[:, :5].bool()
    err = (after[0] - before[0])[prefill_keep].abs().max().item()
    for a, b in zip(after[1:], before[1:]):
        err = max(err, (a - b).abs().max().item())
    assert err <= TOL, f"cached decoding max err {err:.3g}"


def test_deaccelerate_and_reaccelerate(monkeypatch):
    hf = _hf("XLMRobertaXLModel")
    ids, mask = _inputs("XLMRobertaXLModel")
    accelerate(hf, backend="reference")
    accelerate(hf, backend="reference")  # idempotent
    assert deaccelerate(hf) is hf and not is_accelerated(hf)
    assert "forward" not in hf.encoder.__dict__ and not hf._forward_pre_hooks and not hf._forward_hooks
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        hf(ids, attention_mask=mask)
    assert spy.calls == 0


def test_accelerate_rejects_other_models():
    with pytest.raises(TypeError, match="XLMRobertaXLModel"):
        accelerate(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="quantization"):
        accelerate(_hf("XLMRobertaXLModel"), quantization="int8")


def test_module_and_function_names():
    """``xlmrxl.accelerate`` is the function whatever was imported before: no submodule shares its name."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(xlmrxl.__path__, "xlmrxl."):
        if info.name != "xlmrxl.__main__":
            importlib.import_module(info.name)
    assert "xlmrxl.accelerate" not in sys.modules
    hf = _hf("XLMRobertaXLModel")
    assert xlmrxl.accelerate is accelerate
    assert xlmrxl.accelerate(hf, backend="reference") is hf


def test_save_pretrained_after_accelerate(tmp_path):
    torch.manual_seed(15)
    hf = _hf("XLMRobertaXLForMaskedLM")
    ids, mask = _inputs("XLMRobertaXLForMaskedLM")
    accelerate(hf, backend="reference")
    with torch.no_grad():
        a = hf(ids, attention_mask=mask).logits  # fuses q/k/v: the three weights now share one storage
    hf.save_pretrained(tmp_path)
    back = transformers.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        b = back(ids, attention_mask=mask).logits
    err = (a - b)[mask.bool()].abs().max().item()
    assert err <= TOL, f"save/load after accelerate max err {err:.3g}"


# -- int4 -----------------------------------------------------------------------------------------------------------
def test_accelerate_int4(monkeypatch):
    """quantization="int4" swaps the encoder's linears for QuantLinear; the fast path (one int4 GEMM for the
    concatenated q/k/v, int4 GELU epilogue, residual adds fused into add_layernorm) equals transformers' own code
    running the same QuantLinear modules."""
    quant = quantization
    torch.manual_seed(16)
    hf = _hf("XLMRobertaXLForMaskedLM", hidden_size=128, intermediate_size=256)
    ids, mask = _inputs("XLMRobertaXLForMaskedLM")
    with torch.no_grad():
        before = hf(ids, attention_mask=mask).logits
    accelerate(hf, backend="reference", quantization="int4")
    assert isinstance(hf.roberta.encoder.layer[0].attention.self.query, quant.QuantLinear)
    assert isinstance(hf.roberta.encoder.layer[0].intermediate.dense, quant.QuantLinear)
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        fast = hf(ids, attention_mask=mask).logits
    assert spy.calls == 1, "the int4 model did not take the fast path"
    deaccelerate(hf)
    with torch.no_grad():
        exact = hf(ids, attention_mask=mask).logits
    keep = mask.bool()
    err = (fast - exact)[keep].abs().max().item()
    assert err <= 1e-4, f"int4 fast path vs transformers' code on the same QuantLinears max err {err:.3g}"
    rel = ((fast - before)[keep].norm() / before[keep].norm()).item()
    assert rel < 0.5, f"int4 output too far from full precision: relative error {rel:.3g}"


# -- conversions -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["XLMRobertaXLModel", "XLMRobertaXLForMaskedLM", "XLMRobertaXLForMultipleChoice"])
def test_from_to_transformers_roundtrip(head):
    torch.manual_seed(17)
    hf = _hf(head)
    ids, mask = _inputs(head)
    ours = from_transformers(hf, backend="reference")
    assert type(ours).__name__ == head and type(ours).__module__.startswith("xlmrxl.modeling.")
    back = to_transformers(ours)
    assert type(back) is type(hf)
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert p is hf_params[name], f"{name} is not shared with the transformers model"
    for (n1, p1), (n2, p2) in zip(hf.named_parameters(), back.named_parameters()):
        assert n1 == n2 and p1.data_ptr() == p2.data_ptr(), f"{n1} is not shared after the round trip"
    with torch.no_grad():
        a = hf(ids, attention_mask=mask)
        b = ours(ids, attention_mask=mask)
        c = back(ids, attention_mask=mask)
    assert torch.equal(a[0], c[0]), "to_transformers(from_transformers(m)) must compute exactly what m computes"
    keep = _keep(a[0], mask)
    err = (a[0] - b[0])[keep].abs().max().item()
    assert err <= TOL, f"{head}: xlmrxl vs transformers max err {err:.3g}"
    if head == "XLMRobertaXLForMaskedLM":
        assert ours.lm_head.decoder.weight is ours.roberta.embeddings.word_embeddings.weight, "tie lost"


# -- the Triton kernels under the interpreter ------------------------------------------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("head", ["XLMRobertaXLForMaskedLM", "XLMRobertaXLForTokenClassification"])
def test_accelerate_with_triton_kernels(head, monkeypatch, caplog, fresh_log):
    pytest.importorskip("triton")
    torch.manual_seed(18)
    hf = _hf(head, num_hidden_layers=2)
    ids, mask = _inputs(head, seq=7)
    with torch.no_grad():
        before = hf(ids, attention_mask=mask)
    accelerate(hf, backend="triton")
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        after = hf(ids, attention_mask=mask)
    assert spy.calls == 1
    fallbacks = [r.getMessage() for r in caplog.records if "runs the PyTorch reference" in r.getMessage()]
    assert not fallbacks, f"some ops did not run their kernel: {fallbacks}"
    err = _compare(before, after, mask)
    assert err <= TOL, f"{head} with the Triton kernels (interpreter) max err {err:.3g}"


def test_threads_keep_their_own_masks():
    """The 2D mask captured at the base model is per thread: concurrent calls on one model never mix masks."""
    import threading

    torch.manual_seed(19)
    hf = _hf("XLMRobertaXLForMaskedLM")
    batches = [_inputs("XLMRobertaXLForMaskedLM") for _ in range(2)]
    batches[1][1][:, 4:] = 0
    batches[1][0][:, 4:] = 1
    with torch.no_grad():
        expected = [hf(i, attention_mask=m).logits for i, m in batches]
    accelerate(hf, backend="reference")
    errors, results = [], {}

    def work(k):
        try:
            with torch.no_grad():
                for _ in range(5):
                    i, m = batches[k]
                    out = hf(i, attention_mask=m).logits
                    results.setdefault(k, []).append((out - expected[k])[m.bool()].abs().max().item())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    worst = max(max(v) for v in results.values())
    assert worst <= TOL, f"threads sharing one accelerated model: max err {worst:.3g}"


def test_pruned_heads(monkeypatch):
    """transformers' prune_heads shrinks q/k/v and the output projection; the fast path follows the module widths."""
    if TF5:
        pytest.skip("transformers 5.x has no prune_heads")
    torch.manual_seed(20)
    hf = _hf("XLMRobertaXLModel")
    hf.prune_heads({0: [1], 2: [0, 3]})
    ids, mask = _inputs("XLMRobertaXLModel")
    with torch.no_grad():
        before = hf(ids, attention_mask=mask).last_hidden_state
    accelerate(hf, backend="reference")
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        after = hf(ids, attention_mask=mask).last_hidden_state
    assert spy.calls == 1
    assert hf.encoder.layer[2].attention.self._xlmrxl_qkv[0].shape == (3 * 32, 64)
    err = (after - before)[mask.bool()].abs().max().item()
    assert err <= TOL, f"pruned heads: max err {err:.3g}"
    with pytest.raises(ValueError, match="shapes differ"):
        from_transformers(hf)


def test_generate_same_tokens(monkeypatch):
    """transformers' own ``generate`` (greedy, left-padded batch) on an accelerated causal LM: same tokens, and every
    step goes through the cached fast path."""
    torch.manual_seed(22)
    hf = _hf("XLMRobertaXLForCausalLM", num_hidden_layers=2)
    ids = torch.randint(3, 300, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, :2] = 0
    ids[1, :2] = 1
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=1, eos_token_id=None)
    with torch.no_grad():
        before = hf.generate(ids, attention_mask=mask, **kw)
    accelerate(hf, backend="reference")
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad():
        after = hf.generate(ids, attention_mask=mask, **kw)
    assert after.shape == before.shape == (3, 11)
    assert torch.equal(after, before), f"generated tokens differ:\n{after}\nvs\n{before}"
    assert spy.decoder == 5, f"expected the prefill and 4 cached steps on the fast path, got {spy.decoder}"


def test_deepcopy_and_pickle_accelerated(tmp_path):
    """An accelerated model deep-copies (Trainer, EMA copies) and pickles (``torch.save(model)``); the copies stay
    accelerated and compute the same."""
    import copy
    import pickle

    torch.manual_seed(23)
    hf = _hf("XLMRobertaXLForMaskedLM")
    ids, mask = _inputs("XLMRobertaXLForMaskedLM")
    accelerate(hf, backend="reference")
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        for clone in (copy.deepcopy(hf), pickle.loads(pickle.dumps(hf))):
            assert is_accelerated(clone) and clone.roberta.encoder.forward.encoder is clone.roberta.encoder
            out = clone(ids, attention_mask=mask).logits
            err = (out - ref)[mask.bool()].abs().max().item()
            assert err <= TOL, f"copy of an accelerated model: max err {err:.3g}"
            assert (
                clone.roberta.encoder.layer[0].attention.self.query.weight.data_ptr()
                != hf.roberta.encoder.layer[0].attention.self.query.weight.data_ptr()
            )


def test_accelerate_on_an_xlmrxl_model_sets_its_backend():
    ours = xlmrxl.XLMRobertaXLModel(xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs()))
    assert accelerate(ours, backend="reference") is ours
    assert ours.encoder.backend.name == "reference"
