"""Stdin batch commands (``xlmrxl fill-mask`` / ``embed`` / ``classify``): a bad line gets an error record numbered
from 1 as in the input, every good line its output in input order, exit 1 when some line failed; progress bar on
stderr when forced, none with --quiet."""

import io
import json
import sys

import pytest
import torch
from test_corpus import make_checkpoint

import xlmrxl
from xlmrxl.cli import main

LONG = " ".join(["word"] * 200)  # far past the tiny model's 64 positions


@pytest.fixture(scope="module")
def mlm(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("batch_mlm"), spm_dir)


@pytest.fixture(scope="module")
def clf(spm_dir, tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("batch_clf"),
        spm_dir,
        "XLMRobertaXLForSequenceClassification",
        num_labels=3,
        id2label={0: "neg", 1: "neu", 2: "pos"},
    )


def feed(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_fill_mask_bad_lines_get_records_and_good_lines_output(mlm, monkeypatch, capsys):
    data = b"Hello <mask>!\nno mask here\n\n\xff\xfe bad bytes <mask>\n" + LONG.encode() + b" <mask>\nBye <mask>.\n"
    feed(monkeypatch, data)
    assert main(["fill-mask", "--model", str(mlm), "--top-k", "2", "--json", "--batch-size", "2"]) == 1
    cap = capsys.readouterr()
    rows = [json.loads(x) for x in cap.out.splitlines()]
    assert [r.get("line") for r in rows] == [None, 2, 4, 5, None]
    assert rows[0]["input"] == "Hello <mask>!" and rows[-1]["input"] == "Bye <mask>."
    assert "no <mask> token" in rows[1]["error"] and rows[1]["input"] == "no mask here"
    assert "UTF-8" in rows[2]["error"] and "tokens; the model takes at most 64" in rows[3]["error"]
    fill = xlmrxl.pipeline("fill-mask", model=str(mlm), top_k=2)
    for row, text in ((rows[0], "Hello <mask>!"), (rows[-1], "Bye <mask>.")):
        want = fill(text)
        assert [p["token"] for p in row["predictions"]] == [p["token"] for p in want]
        assert [p["score"] for p in row["predictions"]] == pytest.approx([p["score"] for p in want], abs=1e-5)
    assert "line 2:" in cap.err and "3 of 5 lines failed (line 2, 4, 5)" in cap.err
    assert "Traceback" not in cap.err


def test_fill_mask_plain_output_and_all_good(mlm, monkeypatch, capsys):
    feed(monkeypatch, b"Hello <mask>!\nnothing\n")
    assert main(["fill-mask", "--model", str(mlm), "--top-k", "1"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("Hello <mask>!\n") and "nothing\n  error (line 2): " in out
    feed(monkeypatch, b"Hello <mask>!\nBye <mask>.\n")
    assert main(["fill-mask", "--model", str(mlm), "--top-k", "1", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["fill-mask", "nothing", "--model", str(mlm)]) == 1  # an argument: an ordinary error
    assert "no <mask> token" in capsys.readouterr().err


def test_embed_bad_line(mlm, monkeypatch, capsys):
    feed(monkeypatch, b"one\n" + LONG.encode() + b"\ntwo three\n")
    assert main(["embed", "--model", str(mlm), "--pooling", "mean"]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert isinstance(lines[0], list) and lines[1]["line"] == 2 and "error" in lines[1] and isinstance(lines[2], list)
    want = xlmrxl.pipeline("feature-extraction", model=str(mlm), pooling="mean")(["one", "two three"])
    assert max(abs(a - b) for a, b in zip(lines[2], want[1].tolist())) < 1e-5


def test_classify(clf, monkeypatch, capsys):
    feed(monkeypatch, b"good film\n\xff\nbad film, long and dull\n")
    assert main(["classify", "--model", str(clf), "--json"]) == 1
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[1] == {"line": 2, "input": None, "error": rows[1]["error"]} and "UTF-8" in rows[1]["error"]
    model = xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(str(clf)).eval()
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(str(clf))
    for row in (rows[0], rows[2]):
        with torch.no_grad():
            p = model(**tok(row["input"], return_tensors="pt")).logits.float().softmax(-1)[0]
        assert row["label"] == ["neg", "neu", "pos"][int(p.argmax())]
        assert abs(row["score"] - float(p.max())) < 1e-5 and set(row["scores"]) == {"neg", "neu", "pos"}
    assert main(["classify", "a fine day", "--model", str(clf)]) == 0
    label, score, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert label in ("neg", "neu", "pos") and text == "a fine day" and 0 < float(score) <= 1


def test_progress_bar_forced_and_quiet(mlm, monkeypatch, capsys):
    feed(monkeypatch, b"Hello <mask>!\nBye <mask>.\n")
    assert main(["fill-mask", "--model", str(mlm), "--json", "--progress"]) == 0
    assert "xlmrxl fill-mask" in capsys.readouterr().err
    feed(monkeypatch, b"Hello <mask>!\n")
    monkeypatch.setenv("XLMRXL_PROGRESS", "on")
    from xlmrxl_kernels import env

    env.refresh()
    assert main(["fill-mask", "--model", str(mlm), "--json", "--quiet"]) == 0
    assert "xlmrxl fill-mask" not in capsys.readouterr().err
