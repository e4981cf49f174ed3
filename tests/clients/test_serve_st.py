"""``xlmrxl serve`` on a sentence-transformers directory (runs in the clients environments, where
sentence-transformers is installed; skipped elsewhere): pooling and normalisation come from the directory's own
modules, and ``POST /embed`` / ``/v1/embeddings`` equal ``SentenceTransformer.encode`` (fp32 <= 1e-6)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

st_lib = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (clients environment)")
pytest.importorskip("fastapi", reason="xlmrxl serve needs fastapi (xlmrxl[serve])")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _serve import Server, texts  # noqa: E402
from test_corpus_comet import _encoder_dir  # noqa: E402


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False)])
def test_embed_equals_sentence_transformers_encode(pooling, normalize, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(_encoder_dir(tmp_path / "encoder")))
    modules = [word, models.Pooling(word.get_word_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    st.save(str(tmp_path / "st"))
    inputs = texts(9)
    want = st.encode(inputs, batch_size=4, convert_to_numpy=True)

    server = Server(tmp_path / "st", log=tmp_path / "serve.log")  # task, pooling, normalize: from the directory
    try:
        with server.client() as c:
            info = c.get("/info").json()
            got = c.post("/embed", json={"inputs": inputs}).json()
            oa = c.post("/v1/embeddings", json={"input": inputs}).json()
    finally:
        server.stop()
    assert (info["task"], info["pooling"], info["normalize"]) == ("embed", pooling, normalize)
    assert np.abs(np.array(got) - want).max() <= 1e-6
    assert np.abs(np.array([d["embedding"] for d in oa["data"]]) - want).max() <= 1e-6
