"""xlmrxl.pipeline: fill-mask vs transformers.pipeline("fill-mask") on the same tiny checkpoint, the LM head running
at mask positions only, feature-extraction shapes and pooling, batching, errors."""

import pytest
import torch
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.tokenizer import XLMRobertaTokenizer

TEXTS = [
    "Hello <mask>!",
    "Le café était <mask> fort.",
    "x <mask>. y <mask>",
    "Утром над рекой висел <mask>.",
    "Die <mask> fährt alle zehn Minuten bis zum Hauptbahnhof, sagt man.",
]


def make_checkpoint(directory, spm_dir, vocab_pad=0, **overrides):
    """A tiny random MLM (perturbed so predictions are not near-uniform) + tokenizer, saved with our IO."""
    tok = XLMRobertaTokenizer.from_pretrained(spm_dir)
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(vocab_size=len(tok) + vocab_pad, **overrides))
    model = xlmrxl.XLMRobertaXLForMaskedLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ckpt(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny_mlm"), spm_dir)


@pytest.fixture(scope="module")
def fill(ckpt):
    return xlmrxl.pipeline("fill-mask", model=str(ckpt), device="cpu")


def test_fill_mask_structure(fill):
    one = fill("Hello <mask>!")
    assert isinstance(one, list) and len(one) == 5
    for p in one:
        assert set(p) == {"score", "token", "token_str", "sequence"}
        assert isinstance(p["score"], float) and isinstance(p["token"], int) and isinstance(p["token_str"], str)
    scores = [p["score"] for p in one]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    many = fill(TEXTS, top_k=3)
    assert len(many) == len(TEXTS)
    assert all(len(r) == 3 and isinstance(r[0], dict) for i, r in enumerate(many) if i != 2)
    multi = many[2]  # two masks -> one list per mask, sequences keep special tokens (as transformers)
    assert len(multi) == 2 and all(len(r) == 3 for r in multi)
    assert multi[0][0]["sequence"].startswith("<s>") and "<mask>" in multi[0][0]["sequence"]
    assert fill(["Hello <mask>!"]) == fill("Hello <mask>!")  # as transformers: a list of one is unwrapped
    assert fill([]) == []


@pytest.fixture(scope="module")
def hf_pipe(ckpt):
    transformers = pytest.importorskip("transformers")
    model = transformers.XLMRobertaXLForMaskedLM.from_pretrained(str(ckpt)).eval()
    tok = transformers.XLMRobertaTokenizer.from_pretrained(str(ckpt))
    return transformers.pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")


def _assert_same(ours, theirs, where):
    if isinstance(theirs[0], list):
        assert len(ours) == len(theirs), where
        for a, b in zip(ours, theirs):
            _assert_same(a, b, where)
        return
    assert [p["token"] for p in ours] == [p["token"] for p in theirs], where
    assert [p["token_str"] for p in ours] == [p["token_str"] for p in theirs], where
    assert [p["sequence"] for p in ours] == [p["sequence"] for p in theirs], where
    err = max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs))
    assert err < 1e-6, f"{where}: max score error {err:.3e}"


def test_fill_mask_matches_transformers(fill, hf_pipe):
    ours = fill(TEXTS, batch_size=2)  # batched with padding, vs transformers one input at a time
    for text, got in zip(TEXTS, ours):
        _assert_same(got, hf_pipe(text, top_k=5), text)
    _assert_same(fill(TEXTS[0], top_k=12), hf_pipe(TEXTS[0], top_k=12), "top_k=12")


def test_fill_mask_targets_match_transformers(fill, hf_pipe):
    targets = ["\u2581the", "and", "\u2581a", "zzz-not-a-token"]
    _assert_same(fill(TEXTS[1], targets=targets), hf_pipe(TEXTS[1], targets=targets), "targets")
    assert len(fill(TEXTS[1], targets="and", top_k=5)) == 1


def test_lm_head_runs_at_mask_positions_only(fill):
    rows = []
    handle = fill.model.lm_head.register_forward_hook(lambda m, inp, out: rows.append(tuple(inp[0].shape)))
    try:
        fill(TEXTS, batch_size=8)
    finally:
        handle.remove()
    n_masks = sum(t.count("<mask>") for t in TEXTS)
    assert rows == [(n_masks, fill.model.config.hidden_size)], f"lm_head saw {rows}, expected {n_masks} rows"


def test_batch_size_invariance(fill):
    a = fill(TEXTS, batch_size=1)
    b = fill(TEXTS, batch_size=3)
    for x, y, t in zip(a, b, TEXTS):
        _assert_same(x, y, t)


def test_padded_vocab_rows_never_predicted(spm_dir, tmp_path):
    d = make_checkpoint(tmp_path, spm_dir, vocab_pad=22)  # like 250002 tokens in 250880 rows
    model = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(str(d))
    n = len(XLMRobertaTokenizer.from_pretrained(d))
    with torch.no_grad():
        model.lm_head.bias[n:] = 100.0  # the padded rows would win every time
    pipe = xlmrxl.pipeline("fill-mask", model=model, tokenizer=d)
    preds = pipe("Hello <mask>!", top_k=5)
    assert all(p["token"] < n for p in preds), [p["token"] for p in preds]
    assert sum(p["score"] for p in preds) < 0.01  # scores still a softmax over every column, as transformers


def test_fill_mask_errors(fill, ckpt):
    with pytest.raises(ValueError, match=r"inputs\[1\] has no <mask>.*'no mask here'"):
        fill(["a <mask>", "no mask here"])
    with pytest.raises(ValueError, match="top_k"):
        fill("a <mask>", top_k=0)
    with pytest.raises(TypeError, match="unknown option"):
        fill("a <mask>", pooling="mean")
    with pytest.raises(TypeError, match="string"):
        fill(3)
    with pytest.raises(ValueError, match="unknown task"):
        xlmrxl.pipeline("summarization", model=str(ckpt))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        xlmrxl.pipeline("fill-mask", model=str(ckpt / "nope"))
    with pytest.raises(ValueError, match="tokenizer="):
        xlmrxl.pipeline("fill-mask", model=fill.model)
    with pytest.raises(ValueError, match="dtype"):
        xlmrxl.pipeline("fill-mask", model=str(ckpt), dtype="int3")


def test_progress_bar(fill, capsys):
    fill(["a <mask>"] * 3, progress=True, batch_size=2)
    assert "fill-mask" in capsys.readouterr().err


# -- feature extraction ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embed(ckpt):
    return xlmrxl.pipeline("feature-extraction", model=str(ckpt), device="cpu")


def _alone(pipe, text):
    enc = pipe.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        return pipe.model(**enc).last_hidden_state[0].float()


def test_feature_extraction_shapes(embed):
    h = embed.model.config.hidden_size
    text = "Утром над рекой висел густой туман."
    n = len(embed.tokenizer(text)["input_ids"])
    tokens = embed(text)
    assert tokens.shape == (n, h) and tokens.dtype == torch.float32
    assert embed(text, pooling="cls").shape == (h,)
    many = embed(TEXTS, pooling="mean")
    assert many.shape == (len(TEXTS), h) and many.dtype == torch.float32
    states = embed(TEXTS)
    assert [s.shape for s in states] == [(len(embed.tokenizer(t)["input_ids"]), h) for t in TEXTS]


def test_mean_pooling_over_real_tokens_only(embed):
    short, long_ = "a b", "Die Straßenbahn fährt alle zehn Minuten bis zum Hauptbahnhof, sagt man."
    pooled = embed([short, long_], pooling="mean", batch_size=2)  # short is padded in this batch
    for i, text in enumerate([short, long_]):
        want = _alone(embed, text).mean(0)
        assert pooled[i].shape == want.shape
        err = float((pooled[i] - want).abs().max())
        assert err < 1e-5, f"mean pooling of {text!r}: max error {err:.3e}"
    cls = embed([short, long_], pooling="cls")
    err = float((cls[0] - _alone(embed, short)[0]).abs().max())
    assert err < 1e-5, f"cls pooling: max error {err:.3e}"
    tok = embed([short, long_], batch_size=2)
    err = float((tok[0] - _alone(embed, short)).abs().max())
    assert tok[0].shape[0] == len(embed.tokenizer(short)["input_ids"]) and err < 1e-5, f"max error {err:.3e}"


def test_normalize_and_errors(embed):
    v = embed(TEXTS, pooling="mean", normalize=True)
    norms = v.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), f"norms {norms}"
    assert embed([], pooling="mean").shape == (0, embed.model.config.hidden_size) and embed([]) == []
    with pytest.raises(ValueError, match="pooling='max'"):
        embed("x", pooling="max")
    with pytest.raises(ValueError, match="batch_size"):
        embed("x", batch_size=0)


def test_feature_extraction_accepts_model_instances(ckpt, embed):
    transformers = pytest.importorskip("transformers")
    hf = transformers.XLMRobertaXLModel.from_pretrained(str(ckpt), add_pooling_layer=False).eval()
    pipe = xlmrxl.pipeline("feature-extraction", model=hf, tokenizer=ckpt, backend=None, pooling="mean")
    ours = embed(TEXTS, pooling="mean")
    err = float((pipe(TEXTS) - ours).abs().max())
    assert err < 1e-5, f"transformers model through our pipeline vs ours: max error {err:.3e}"
    mlm = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(str(ckpt))
    err = float(
        (xlmrxl.pipeline("feature-extraction", model=mlm, tokenizer=ckpt, pooling="mean")(TEXTS) - ours).abs().max()
    )
    assert err < 1e-5, f"MLM backbone vs base model: max error {err:.3e}"


def test_bf16_pipeline_runs(ckpt):
    pipe = xlmrxl.pipeline("fill-mask", model=str(ckpt), dtype="bfloat16", top_k=3)
    assert pipe.model.dtype == torch.bfloat16
    preds = pipe(TEXTS[:2])
    assert all(len(r) == 3 and all(0 < p["score"] <= 1 for p in r) for r in preds)
    emb = xlmrxl.pipeline("feature-extraction", model=str(ckpt), dtype="bf16", pooling="mean")(TEXTS[:2])
    assert emb.dtype == torch.float32 and torch.isfinite(emb).all()
