"""``xlmrxl serve`` on tiny offline COMET checkpoints (runs in the clients environment, where unbabel-comet is
installed; skipped elsewhere): ``POST /comet`` segment scores equal plain COMET's ``predict`` (fp32 <= 1e-6) whatever
the server's batching, the system score is their mean, XCOMET's error spans come through, and a reference-based
metric refuses segments without ``ref``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

comet = pytest.importorskip("comet", reason="the comet task needs unbabel-comet (clients environment)")
pytest.importorskip("fastapi", reason="xlmrxl serve needs fastapi (xlmrxl[serve])")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _serve import Server  # noqa: E402
from test_corpus_comet import LINES, _comet_checkpoint, _encoder_dir  # noqa: E402


@pytest.mark.parametrize("cls_name", ["RegressionMetric", "XCOMETMetric"])
def test_comet_route_equals_plain_comet(cls_name, tmp_path):
    encoder = _encoder_dir(tmp_path / "encoder")
    ckpt = _comet_checkpoint(tmp_path / "metric", cls_name, encoder)
    n = 7
    src = [LINES[i % len(LINES)] for i in range(n)]
    mt = [LINES[(i + 3) % len(LINES)] for i in range(n)]
    ref = [LINES[(i + 5) % len(LINES)] for i in range(n)]
    plain = comet.load_from_checkpoint(str(ckpt), local_files_only=True)
    want = plain.predict([{"src": s, "mt": m, "ref": r} for s, m, r in zip(src, mt, ref)], batch_size=3, gpus=0)

    server = Server(tmp_path / "metric", "--max-batch-tokens", "60", log=tmp_path / "serve.log")  # task inferred
    try:
        with server.client() as c:
            info = c.get("/info").json()
            got = c.post("/comet", json={"src": src, "mt": mt, "ref": ref}).json()
            no_ref = c.post("/comet", json={"src": src[:2], "mt": mt[:2]})
            uneven = c.post("/comet", json={"src": src[:2], "mt": mt[:1], "ref": ref[:2]})
    finally:
        server.stop()
    assert info["task"] == "comet"
    assert np.abs(np.array(got["scores"]) - np.array(want.scores)).max() <= 1e-6
    assert abs(got["system_score"] - float(np.mean(want.scores))) <= 1e-6
    assert uneven.status_code == 422 and "same number" in uneven.json()["error"]
    if cls_name == "XCOMETMetric":
        spans = want.metadata.error_spans
        assert [[(s["start"], s["end"], s["severity"]) for s in row] for row in got["error_spans"]] == [
            [(s["start"], s["end"], s["severity"]) for s in row] for row in spans
        ]
    else:
        assert "error_spans" not in got
        assert no_ref.status_code == 422 and "ref" in no_ref.json()["error"]
