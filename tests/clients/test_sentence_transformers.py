"""``xlmrxl.accelerate`` on sentence-transformers clients built offline on a tiny random XLM-RoBERTa-XL (runs in
.venv-clients with sentence-transformers 5.x on transformers 4.56.2, and in .venv-st5 with 6.x on the newest 5.x):
``SentenceTransformer.encode`` (mean pooling, normalised or not) and ``CrossEncoder.predict`` give the embeddings /
scores they gave before acceleration (fp32 <= 1e-5) with padding in every batch; the fused encoder ran; the object
is the same; ``deaccelerate`` restores; a non-XL model gets an error naming what was found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")

import _client_fixtures  # noqa: E402
from sentence_transformers import CrossEncoder, SentenceTransformer  # noqa: E402

import xlmrxl  # noqa: E402
from benchmarks.clients_models import sentences  # noqa: E402
from xlmrxl.fast import stack  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    return _client_fixtures.tiny_xl_dir(tmp_path_factory)


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    real = stack.encoder_forward

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(stack, "encoder_forward", spy)
    return calls


@pytest.mark.parametrize("normalize", [False, True])
def test_sentence_transformer_encode(xl_dir, fused_calls, normalize):
    torch.manual_seed(0)
    st = SentenceTransformer(str(xl_dir), device="cpu")
    texts = sentences(9, 1, 40, seed=4)  # lengths 1-40 words: padding in every batch
    want = st.encode(texts, batch_size=4, normalize_embeddings=normalize, convert_to_numpy=True)
    assert xlmrxl.accelerate(st) is st and xlmrxl.is_accelerated(st)
    got = st.encode(texts, batch_size=4, normalize_embeddings=normalize, convert_to_numpy=True)
    assert got.shape == want.shape and got.dtype == want.dtype
    err = float(np.abs(got - want).max())
    assert err <= TOL, f"embeddings differ by {err:.3g}"
    assert fused_calls, "the fused encoder did not run"
    got1 = st.encode(texts[:1], convert_to_numpy=True, normalize_embeddings=normalize)  # batch of one, no padding
    assert float(np.abs(got1 - want[:1]).max()) <= TOL
    assert xlmrxl.deaccelerate(st) is st and not xlmrxl.is_accelerated(st)
    n = len(fused_calls)
    again = st.encode(texts, batch_size=4, normalize_embeddings=normalize, convert_to_numpy=True)
    assert len(fused_calls) == n and np.array_equal(again, want)


def test_cross_encoder_predict(xl_dir, fused_calls):
    torch.manual_seed(0)
    ce = CrossEncoder(str(xl_dir), num_labels=1, device="cpu")
    a, b = sentences(7, 1, 30, seed=5), sentences(7, 1, 30, seed=6)
    pairs = list(zip(a, b))
    want = ce.predict(pairs, batch_size=3, convert_to_numpy=True)
    assert xlmrxl.accelerate(ce) is ce and xlmrxl.is_accelerated(ce)
    got = ce.predict(pairs, batch_size=3, convert_to_numpy=True)
    err = float(np.abs(np.asarray(got) - np.asarray(want)).max())
    assert err <= TOL, f"cross-encoder scores differ by {err:.3g}"
    assert fused_calls, "the fused encoder did not run"
    xlmrxl.deaccelerate(ce)
    assert not xlmrxl.is_accelerated(ce)


def test_not_an_xl_model(xl_dir):
    import transformers

    st = SentenceTransformer(str(xl_dir), device="cpu")
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    holder = next(m for m in st.modules() if getattr(m, "auto_model", None) is not None)
    bert = transformers.BertModel(cfg)
    for name in ("model", "auto_model"):  # sentence-transformers 5.x keeps it as .auto_model, 6.x as .model
        if isinstance(getattr(type(holder), name, None), property):
            continue
        if name in holder._modules:
            holder._modules[name] = bert
    with pytest.warns(UserWarning, match="BertModel.*left unchanged"):  # as for a bare BertModel (issue 18)
        assert xlmrxl.accelerate(st) is st
    assert not xlmrxl.is_accelerated(st)
