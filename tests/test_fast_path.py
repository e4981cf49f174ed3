"""The padding-free fast path (``xlmrxl.fast``) against the exact path and transformers 4.56.2: fp32 on real tokens,
<= 1e-5, every head, with padding, a fully padded row, length-1 rows and none; references and Triton kernels under the
interpreter. Also packing, fused QKV views, ``output_hidden_states``, ``return_packed`` and every fallback reason."""

import logging

import pytest
import torch
from _oracle import HEADS, EncoderForwardSpy, assert_lowp, force_exact, hf_twin, randomize
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import fast as fast_path
from xlmrxl import quantization, reasons
from xlmrxl.fast import CACHED, EXACT, PACKED, Call, route
from xlmrxl.reasons import codes

transformers = pytest.importorskip("transformers")

TOL = 1e-5


# -- helpers ------------------------------------------------------------------------------------------------------
def _ours(head, backend="reference", **overrides):
    kw = tiny_config_kwargs(**overrides)
    if head == "XLMRobertaXLForCausalLM":
        kw.setdefault("is_decoder", True)
    cfg = xlmrxl.XLMRobertaXLConfig(**kw)
    model = randomize(getattr(xlmrxl, head)(cfg)).eval()
    model.set_backend(backend)
    return model


def _hf_twin(ours):
    """transformers 4.56.2's model of the same class with identical weights (``tests/_oracle.py``)."""
    return hf_twin(ours)


def _inputs(case, vocab=300, pad=1, batch=4, seq=9):
    ids = torch.randint(3, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    if case == "padded":  # right padding, a fully padded row, a length-1 row, a full row
        mask[0, 6:] = 0
        mask[1, :] = 0
        mask[2, 1:] = 0
    elif case == "left":
        mask[0, :3] = 0
        mask[3, :8] = 0
    ids[mask == 0] = pad
    return ids, mask


# heads whose output is computed from position 0 (<s>): a batch with a row starting with padding runs the exact path
READS_FIRST = ("XLMRobertaXLForSequenceClassification", "XLMRobertaXLForMultipleChoice")


def _head_inputs(head, ids, mask):
    if head == "XLMRobertaXLForMultipleChoice":  # (B, C, S): two choices per example
        return ids.view(2, 2, -1), mask.view(2, 2, -1)
    return ids, mask


def _extra(head):
    return {"use_cache": False} if head == "XLMRobertaXLForCausalLM" else {}


def _first(out):
    return out[0]


def _real_max_err(a, b, mask):
    """Max |a - b| where the answer depends on real tokens only: token-level outputs (B, S, ...) at mask == 1;
    sequence-level outputs (read at the first token, like every classification head) on rows whose first token is
    real. ``mask`` is the model's input mask ((B, S), or (B, C, S) for multiple choice)."""
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    if tuple(a.shape[: mask.dim()]) == tuple(mask.shape):
        keep = mask.bool()
    else:
        first = mask[..., 0].bool()
        keep = (
            first.reshape(first.shape + (1,) * (a.dim() - first.dim())).expand(a.shape)
            if a.dim() >= first.dim()
            else first
        )
    return (a - b)[keep].abs().max().item() if keep.any() else 0.0


# -- parity: every head, references ---------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("case", ["padded", "none"])
def test_fast_vs_exact_vs_transformers(head, case, monkeypatch):
    torch.manual_seed(hash((head, case)) % 1000)
    ours = _ours(head)
    hf = _hf_twin(ours)
    ids, mask = _inputs(case)
    ids_h, mask_h = _head_inputs(head, ids, mask)
    spy = EncoderForwardSpy(monkeypatch)
    # a classification head computes its logits from position 0, padding in the fully padded row: exact path
    # (tests/test_padded_reads.py); every other head, and every batch whose rows start with a real token, run fused
    want = 0 if head in READS_FIRST and not bool(mask[:, 0].all()) else 1
    with torch.no_grad():
        fast = ours(ids_h, attention_mask=mask_h, **_extra(head))
        assert spy.calls == want, "the fast path was not taken" if want else "position 0 is padding: exact path"
        ref = hf(ids_h, attention_mask=mask_h, **_extra(head))
        force_exact(monkeypatch)
        exact = ours(ids_h, attention_mask=mask_h, **_extra(head))
    assert spy.calls == want, "forcing the exact path still ran the fast path"
    a, b, c = _first(fast), _first(exact), _first(ref)
    assert a.shape == c.shape and a.dtype == c.dtype == torch.float32, f"{tuple(a.shape)} {a.dtype} vs {tuple(c.shape)}"
    err_hf, err_exact = _real_max_err(a, c, mask_h), _real_max_err(a, b, mask_h)
    assert err_hf <= TOL, f"{head}/{case}: fast vs transformers max err {err_hf:.3g}"
    assert err_exact <= TOL, f"{head}/{case}: fast vs exact max err {err_exact:.3g}"


def test_padded_positions_are_zero_and_rows_independent():
    torch.manual_seed(1)
    model = _ours("XLMRobertaXLModel")
    ids, mask = _inputs("padded")
    with torch.no_grad():
        out = model(ids, attention_mask=mask).last_hidden_state
        solo = model(ids[0:1, :6], attention_mask=mask[0:1, :6]).last_hidden_state
    assert out.shape == (4, 9, 64)
    assert out[~mask.bool()].abs().max().item() == 0.0, "padded positions must be zeros"
    assert torch.isfinite(out).all()
    err = (out[0, :6] - solo[0]).abs().max().item()
    assert err <= TOL, f"a right-padded row must equal its unpadded run; max err {err:.3g}"


def test_output_hidden_states_semantics(monkeypatch):
    torch.manual_seed(2)
    ours = _ours("XLMRobertaXLModel")
    hf = _hf_twin(ours)
    ids, mask = _inputs("left")
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        out = ours(ids, attention_mask=mask, output_hidden_states=True)
        ref = hf(ids, attention_mask=mask, output_hidden_states=True)
        emb = ours.embeddings(input_ids=ids)
    assert spy.calls == 1
    hs = out.hidden_states
    assert len(hs) == ours.config.num_hidden_layers + 1 == len(ref.hidden_states)
    assert all(h.shape == (4, 9, 64) and h.dtype == torch.float32 for h in hs)
    assert torch.equal(hs[0], emb), "entry 0 is the embeddings output, padded positions included"
    assert torch.equal(hs[-1], out.last_hidden_state), "the last entry is the final LayerNorm output"
    for i, (a, b) in enumerate(zip(hs, ref.hidden_states)):
        err = _real_max_err(a, b, mask)
        assert err <= TOL, f"hidden_states[{i}] max err {err:.3g}"
    for h in hs[1:]:
        assert h[~mask.bool()].abs().max().item() == 0.0


def test_return_packed():
    torch.manual_seed(3)
    model = _ours("XLMRobertaXLModel")
    ids, mask = _inputs("padded")
    enc = model.roberta.encoder if hasattr(model, "roberta") else model.encoder
    with torch.no_grad():
        emb = model.embeddings(input_ids=ids)
        padded, _ = fast_path.encoder_forward(enc, emb, mask, "reference")
        res = fast_path.encoder_forward(enc, emb, mask, "reference", return_packed=True, output_hidden_states=True)
    T = int(mask.sum())
    assert res.last_hidden_state.shape == (T, 64) and len(res.hidden_states) == 4
    assert torch.equal(res.packing.unpack(res.last_hidden_state), padded)
    assert torch.equal(res.hidden_states[0], emb[mask.bool()])


def test_all_rows_fully_padded():
    model = _ours("XLMRobertaXLModel")
    ids = torch.full((2, 5), 1)
    mask = torch.zeros(2, 5, dtype=torch.long)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 5, 64) and out.last_hidden_state.abs().max().item() == 0.0
    assert len(out.hidden_states) == 4


# -- the fused QKV buffer -------------------------------------------------------------------------------------------
def test_fused_qkv_shares_storage_and_keeps_state_dict():
    torch.manual_seed(4)
    model = _ours("XLMRobertaXLForMaskedLM")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {n: p for n, p in model.named_parameters()}
    ids, mask = _inputs("padded")
    with torch.no_grad():
        model(ids, attention_mask=mask)
    after = model.state_dict()
    assert list(after) == list(before), "state_dict keys changed"
    assert all(torch.equal(after[k], before[k]) for k in before), "state_dict values changed"
    assert {n: p for n, p in model.named_parameters()} == params_before, "Parameter objects were replaced"
    for layer in model.roberta.encoder.layer:
        sa = layer.attention.self
        W, b = sa._xlmrxl_qkv[:2]
        H = sa.query.weight.shape[0]
        assert W.shape == (3 * H, 64) and W.is_contiguous()
        for i, lin in enumerate((sa.query, sa.key, sa.value)):
            assert lin.weight.data_ptr() == W[i * H].data_ptr(), "q/k/v weights must be views of the fused buffer"
            assert lin.bias.data_ptr() == b[i * H :].data_ptr()
            assert lin.weight.untyped_storage().data_ptr() == W.untyped_storage().data_ptr()
    # in-place weight updates (fine-tuning, load_state_dict) reach the fused buffer
    with torch.no_grad():
        model.load_state_dict({k: v * 1.5 if "attention.self.key.weight" in k else v for k, v in before.items()})
        assert torch.equal(
            model.roberta.encoder.layer[0].attention.self._xlmrxl_qkv[0][H : 2 * H],
            before["roberta.encoder.layer.0.attention.self.key.weight"] * 1.5,
        )


def test_fused_qkv_refuses_after_to(monkeypatch):
    torch.manual_seed(5)
    model = _ours("XLMRobertaXLModel")
    ids, mask = _inputs("padded")
    with torch.no_grad():
        model(ids, attention_mask=mask)
        model.double().float()  # new storages: the views are gone
        sa = model.encoder.layer[0].attention.self
        assert sa.query.weight.data_ptr() != sa._xlmrxl_qkv[0].data_ptr()
        fast = model(ids, attention_mask=mask).last_hidden_state
        assert sa.query.weight.data_ptr() == sa._xlmrxl_qkv[0].data_ptr(), "the next forward must fuse again"
        force_exact(monkeypatch)
        exact = model(ids, attention_mask=mask).last_hidden_state
    err = _real_max_err(fast, exact, mask)
    assert err <= TOL, f"after .to(): max err {err:.3g}"


def test_fusing_under_inference_mode_keeps_parameters_normal():
    model = _ours("XLMRobertaXLModel")
    ids, mask = _inputs("none")
    with torch.inference_mode():
        model(ids, attention_mask=mask)
    w = model.encoder.layer[0].attention.self.query.weight
    assert not w.is_inference(), "fused views must not turn parameters into inference tensors"
    # autograd still works afterwards (exact path, since grad is recording)
    model.encoder.layer[0].attention.self.query.weight.grad = None
    model(ids, attention_mask=mask).last_hidden_state.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


# -- decoder (causal) -----------------------------------------------------------------------------------------------
def test_causal_decoder_fast_path(monkeypatch):
    torch.manual_seed(6)
    ours = _ours("XLMRobertaXLForCausalLM")
    hf = _hf_twin(ours)
    ids, mask = _inputs("padded")
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, use_cache=False).logits
        b = hf(ids, attention_mask=mask, use_cache=False).logits
        ours(ids, attention_mask=mask, use_cache=True)  # with a cache: decoder_forward, not encoder_forward
    assert spy.calls == 1
    err = _real_max_err(a, b, mask)
    assert err <= TOL, f"causal fast path vs transformers max err {err:.3g}"


# -- low precision --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_two_x_rule(dtype, monkeypatch):
    """bf16 / fp16 on CPU: the fast path's error vs the fp32 truth is at most 2x transformers' own error in the
    same dtype (both compared to an fp32 run of the same weights)."""
    torch.manual_seed(10)
    ours = _ours("XLMRobertaXLForMaskedLM")
    ids, mask = _inputs("padded")
    with torch.no_grad():
        truth = ours(ids, attention_mask=mask).logits
        hf = _hf_twin(ours.to(dtype))
        spy = EncoderForwardSpy(monkeypatch)
        got = ours(ids, attention_mask=mask).logits
        theirs = hf(ids, attention_mask=mask).logits
    assert spy.calls == 1
    assert got.dtype == theirs.dtype == dtype and got.shape == truth.shape
    assert_lowp(got, theirs, truth, where=mask.bool(), name=f"MLM logits {dtype}")


# -- fallbacks ------------------------------------------------------------------------------------------------------
FALLBACKS = {
    "output_attentions": (dict(), dict(output_attentions=True), "output_attentions"),
    "head_mask": (dict(), dict(head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0])), "head_mask"),
    "relative_key": (dict(position_embedding_type="relative_key"), dict(), "relative_key"),
    "training_dropout": (dict(), dict(), "dropout"),
    "autograd": (dict(), dict(), "autograd"),
    "hook": (dict(), dict(), "hooks"),
    "gelu_new": (dict(hidden_act="gelu_new"), dict(), "GELU"),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_fallback_reasons(case, monkeypatch, caplog, fresh_log):
    cfg_kw, call_kw, needle = FALLBACKS[case]
    torch.manual_seed(7)
    model = _ours("XLMRobertaXLModel", **cfg_kw)
    ids, mask = _inputs("padded")
    ctx = torch.no_grad()
    if case == "training_dropout":
        model.train()
    if case == "autograd":
        ctx = torch.enable_grad()
    if case == "hook":
        model.encoder.layer[1].intermediate.register_forward_hook(lambda m, i, o: None)
    spy = EncoderForwardSpy(monkeypatch)
    with caplog.at_level(logging.INFO, logger="xlmrxl"), ctx:
        torch.manual_seed(0)
        a = model(ids, attention_mask=mask, **call_kw)
        torch.manual_seed(0)
        model(ids, attention_mask=mask, **call_kw)
    assert spy.calls == 0, f"{case}: the fast path must not run"
    lines = [r.getMessage() for r in caplog.records if "exact (unfused) path" in r.getMessage()]
    assert len(lines) == 1, f"{case}: expected the reason logged once, got {lines}"
    assert needle in lines[0], f"{case}: reason {lines[0]!r} does not mention {needle!r}"
    # and the exact path's answer is the exact path's answer
    force_exact(monkeypatch)
    with ctx:
        torch.manual_seed(0)
        b = model(ids, attention_mask=mask, **call_kw)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_route_direct():
    """The route's answer: the path, and every reason each fused path was not taken (with stable codes)."""
    model = _ours("XLMRobertaXLModel")
    enc = model.encoder
    h = torch.randn(1, 3, 64)
    with torch.no_grad():
        r = route(enc, Call(hidden_states=h))
        assert r.path == PACKED and r.reasons == () and r.not_supported[PACKED] == ()
        assert codes(r.not_supported[CACHED]) == [reasons.NO_KV_CACHE]
        assert route(enc, Call(hidden_states=h, head_mask=[None, None, None])).path == PACKED  # 4.56.2's get_head_mask
        r = route(
            enc,
            Call(
                hidden_states=h,
                encoder_hidden_states=torch.randn(1, 2, 64),
                output_attentions=True,
                attention_mask=torch.ones(1, 1, 3, 3),
            ),
        )
        assert r.path == EXACT
        assert set(codes(r.reasons)) == {
            reasons.CROSS_ATTENTION,
            reasons.OUTPUT_ATTENTIONS,
            reasons.ATTENTION_MASK,
        }, "every reason, not only the first"
        assert "cross-attention" in r.reasons[codes(r.reasons).index(reasons.CROSS_ATTENTION)]
        r = route(enc, Call(hidden_states=h, past_key_values=object()))  # bidirectional model with a cache
        assert r.path == EXACT and r.wanted == CACHED
        assert codes(r.not_supported[PACKED]) == [reasons.KV_CACHE]
        assert codes(r.not_supported[CACHED]) == [reasons.CACHE]
        assert route(enc, Call(hidden_states=h, past_key_values=object(), causal=True)).reasons[0].code == reasons.CACHE
        with pytest.raises(TypeError):
            Call(hidden_states=h, atention_mask=None)  # a misspelled field is an error, not ignored
    with torch.enable_grad():
        assert codes(route(enc, Call(hidden_states=h.requires_grad_())).reasons) == [reasons.AUTOGRAD]


def test_route_reads_is_decoder_per_call():
    model = _ours("XLMRobertaXLModel")
    h = torch.randn(1, 3, 64)
    with torch.no_grad():
        assert not route(model.encoder, Call(hidden_states=h)).causal
        model.config.is_decoder = True
        assert route(model.encoder, Call(hidden_states=h)).causal


def test_backend_says_which_implementation_it_chose():
    be = xlmrxl.Backend("reference")
    q = torch.randn(5, 2, 8)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    choice = be.choose("attention_varlen", (q, q, q, cu, cu, 3, 3))
    assert choice.name == "reference" and choice.fn.__name__ == "attention_varlen_ref"
    assert codes([choice.reasons["triton"]]) == [reasons.BACKEND]
    lens = [2, 3]  # with the host lengths the rule takes SDPA per sequence (the reference's maths)
    choice = be.choose("attention_varlen", (q, q, q, cu, cu, 3, 3), {"seqlens_q": lens, "seqlens_k": lens})
    assert choice.name == "sdpa-seq" and choice.candidate.rule and choice.source == "rule"
    assert codes(be.kernel_not_supported("attention", torch.device("cpu"))) == [reasons.BACKEND]
    assert codes(xlmrxl.Backend("auto").kernel_not_supported("attention", torch.device("cpu"))) in (
        [reasons.DEVICE],
        [reasons.TRITON],
    )


# -- int4 layers ----------------------------------------------------------------------------------------------------
def test_int4_layers_take_the_fast_path(monkeypatch):
    q = quantization
    torch.manual_seed(8)
    model = _ours("XLMRobertaXLModel", hidden_size=128, intermediate_size=256, num_attention_heads=4)
    q.quantize(model, group_size=64)
    ids, mask = _inputs("padded")
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        fast = model(ids, attention_mask=mask).last_hidden_state
        assert spy.calls == 1
        force_exact(monkeypatch)
        exact = model(ids, attention_mask=mask).last_hidden_state
    err = _real_max_err(fast, exact, mask)
    assert err <= 1e-4, f"int4 fast vs exact path (both dequantized references) max err {err:.3g}"


def test_fused_qkv_costs_no_memory():
    """Fusing q/k/v (dense or int4) makes the three layers views of one buffer: no second copy of the weights."""
    q = quantization

    def encoder_bytes(model):
        """Bytes of every live tensor storage (not only registered ones: a cache kept in a plain attribute counts)."""
        import gc
        import warnings

        gc.collect()
        storages = {}
        with warnings.catch_warnings():  # isinstance() on some deprecated torch objects warns
            warnings.simplefilter("ignore")
            for t in gc.get_objects():
                if isinstance(t, torch.Tensor) and not t.is_meta:
                    try:
                        st = t.untyped_storage()
                        storages[st.data_ptr()] = st.nbytes()
                    except RuntimeError:  # FakeTensors an earlier test's torch.compile left behind: no storage
                        continue
        return sum(storages.values())

    for int4 in (False, True):
        torch.manual_seed(10)
        model = _ours("XLMRobertaXLModel", hidden_size=128, intermediate_size=256, num_attention_heads=4)
        if int4:
            q.quantize(model, group_size=64)
        before = encoder_bytes(model)
        ids, mask = _inputs("padded")
        with torch.no_grad():
            out = model(ids, attention_mask=mask)
        del out
        after = encoder_bytes(model)
        # a few hundred bytes of per-model bookkeeping may appear; a copy of the q/k/v weights is >= 70 KB here
        assert after - before <= 4096, f"int4={int4}: live tensor bytes {before} -> {after} after fusing q/k/v"


# -- the Triton kernels under the interpreter -------------------------------------------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("head", ["XLMRobertaXLForMaskedLM", "XLMRobertaXLForSequenceClassification"])
def test_triton_kernels_through_the_model(head, monkeypatch, caplog, fresh_log):
    pytest.importorskip("triton")
    torch.manual_seed(9)
    ours = _ours(head, backend="triton", num_hidden_layers=2)
    hf = _hf_twin(ours)
    ids, mask = _inputs("padded", batch=4, seq=7)
    if head in READS_FIRST:  # no row may start with padding, or the call runs the exact path
        mask[1, 0], ids[1, 0] = 1, 5
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        a = _first(ours(ids, attention_mask=mask))
        b = _first(hf(ids, attention_mask=mask))
    assert spy.calls == 1
    fallbacks = [r.getMessage() for r in caplog.records if "runs the PyTorch reference" in r.getMessage()]
    assert not fallbacks, f"some ops did not run their kernel: {fallbacks}"
    assert a.shape == b.shape and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    err = _real_max_err(a, b, mask)
    assert err <= TOL, f"{head} with the Triton kernels (interpreter) vs transformers max err {err:.3g}"


@pytest.mark.triton
def test_int4_layers_with_triton_kernels(monkeypatch, caplog, fresh_log):
    """The int4 route (one int4 GEMM for the concatenated q/k/v, GELU in the int4 epilogue, residual adds fused into
    add_layernorm) with the Triton kernels under the interpreter equals the same route on the references."""
    pytest.importorskip("triton")
    q = quantization
    torch.manual_seed(24)
    model = _ours(
        "XLMRobertaXLModel", hidden_size=128, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2
    )
    q.quantize(model, group_size=64)
    ids, mask = _inputs("padded", seq=7)
    spy = EncoderForwardSpy(monkeypatch)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).last_hidden_state
        model.set_backend("triton")
        with caplog.at_level(logging.INFO, logger="xlmrxl"):
            got = model(ids, attention_mask=mask).last_hidden_state
    assert spy.calls == 2
    fallbacks = [r.getMessage() for r in caplog.records if "runs the PyTorch reference" in r.getMessage()]
    assert not fallbacks, f"some ops did not run their kernel: {fallbacks}"
    err = _real_max_err(got, ref, mask)
    assert err <= 1e-4, f"int4 route, kernels vs references: max err {err:.3g}"


# -- packed outputs on request ----------------------------------------------------------------------------------------
def test_forward_packed_returns_real_tokens_only():
    torch.manual_seed(11)
    model = _ours("XLMRobertaXLModel")
    ids, mask = _inputs("padded")
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).last_hidden_state
        out = model.forward_packed(ids, attention_mask=mask)
    T = int(mask.sum())
    assert out.last_hidden_state.shape == (T, padded.shape[-1]) and out.last_hidden_state.dtype == padded.dtype
    err = (out.last_hidden_state - padded[mask.bool()]).abs().max().item()
    assert err <= 1e-6, f"packed vs padded real-token outputs max err {err:.3g}"
    assert out.packing.cu_seqlens.tolist() == [0] + mask.sum(1).cumsum(0).tolist()
    assert torch.equal(out.packing.unpack(out.last_hidden_state), padded)
    with pytest.raises(ValueError, match="autograd"):  # grad mode on, parameters require grad
        model.forward_packed(ids, attention_mask=mask)
