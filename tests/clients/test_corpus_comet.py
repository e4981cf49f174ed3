"""xlmrxl.corpus.run("comet", ...) on a tiny offline COMET checkpoint (runs in the clients environment, where
unbabel-comet is installed; skipped elsewhere): every row once, segment scores equal to plain COMET's ``predict``
(fp32 <= 1e-6), bad rows reported, and XCOMET's error spans carried through."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

comet = pytest.importorskip("comet", reason="the comet task needs unbabel-comet (clients environment)")
pytest.importorskip("xlmrxl.comet", reason="xlmrxl.comet (the COMET client) is not in this checkout")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402  (a dependency of unbabel-comet)

import xlmrxl  # noqa: E402
import xlmrxl.corpus  # noqa: E402
from xlmrxl.tokenizer import CORPUS_PATH, train_sentencepiece  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_config_kwargs  # noqa: E402

LINES = [ln for ln in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _encoder_dir(d: Path) -> Path:
    """A tiny XLM-RoBERTa-XL checkpoint + tokenizer in transformers' layout (what COMET's encoder loads)."""
    train_sentencepiece(d, vocab_size=1000)
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(d)
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(vocab_size=len(tok), max_position_embeddings=130))
    torch.manual_seed(0)
    xlmrxl.XLMRobertaXLModel(cfg, add_pooling_layer=False).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _comet_checkpoint(root: Path, cls_name: str, encoder: Path, **hparams) -> Path:
    """``root/checkpoints/model.ckpt`` + ``root/hparams.yaml`` for a COMET metric built offline on ``encoder``,
    with its layer-mix weights randomised so a wrong mix shows."""
    cls = getattr(comet.models, cls_name)
    mix = {"sent_layer": "mix", "word_layer": 2} if cls_name == "XCOMETMetric" else {"layer": "mix"}
    model = cls(
        encoder_model="XLM-RoBERTa-XL",
        pretrained_model=str(encoder),
        load_pretrained_weights=True,
        local_files_only=True,
        **mix,
        **hparams,
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layerwise_attention" in name or "scalar_parameters" in name:
                p.normal_(0.0, 1.0)
    (root / "checkpoints").mkdir(parents=True)
    hp = dict(model.hparams)
    hp["load_pretrained_weights"] = False
    import pytorch_lightning  # COMET's trainer library: its version tags the checkpoint

    version = pytorch_lightning.__version__
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": hp, "pytorch-lightning_version": version}
    torch.save(ckpt, root / "checkpoints" / "model.ckpt")
    ids = {"RegressionMetric": "regression_metric", "XCOMETMetric": "xcomet_metric"}
    (root / "hparams.yaml").write_text(yaml.safe_dump({"class_identifier": ids[cls_name], **hp}))
    return root / "checkpoints" / "model.ckpt"


def _triples(n: int) -> list[dict]:
    return [
        {"id": i, "src": LINES[i % len(LINES)], "mt": LINES[(i + 3) % len(LINES)], "ref": LINES[(i + 5) % len(LINES)]}
        for i in range(n)
    ]


@pytest.mark.parametrize("cls_name", ["RegressionMetric", "XCOMETMetric"])
def test_corpus_comet_scores_equal_plain_comet(cls_name, tmp_path):
    encoder = _encoder_dir(tmp_path / "encoder")
    ckpt = _comet_checkpoint(tmp_path / "metric", cls_name, encoder)
    rows = _triples(11)
    rows[4]["mt"] = ""  # a bad row: reported, never dropped
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    s = xlmrxl.corpus.run("comet", ckpt, tmp_path / "in.parquet", tmp_path / "out", rows_per_block=4, progress=False)
    assert s["complete"] and s["rows"] == 11 and s["error_rows"] == 1
    out = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert sorted(out) == list(range(11)) and out[4]["error"] == "empty src or mt" and out[4]["score"] is None

    plain = comet.load_from_checkpoint(str(ckpt), local_files_only=True)
    good = [r for r in rows if r["mt"]]
    ref = plain.predict([{k: r[k] for k in ("src", "mt", "ref")} for r in good], batch_size=3, gpus=0)
    for r, score in zip(good, ref.scores):
        assert abs(out[r["id"]]["score"] - score) <= 1e-6, f"row {r['id']}: {out[r['id']]['score']} vs {score}"
    if cls_name == "XCOMETMetric":
        spans = ref.metadata.error_spans
        for r, want in zip(good, spans):
            got = out[r["id"]]["error_spans"]
            assert [(s["start"], s["end"], s["severity"]) for s in got] == [
                (s["start"], s["end"], s["severity"]) for s in want
            ]
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["complete"]
