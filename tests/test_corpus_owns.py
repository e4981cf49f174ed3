"""The corpus owns its output: one key per input file (the suffix counts, collisions refused), foreign or stale
``part-*`` files refused, csv / tsv / json / jsonl parsed by their format (never read as text lines), and error rows
written as null lists of zero length on every pyarrow from 14 (``make test-clients`` runs this on pyarrow 21)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_corpus import by_id, make_checkpoint, read_output, texts

import xlmrxl.corpus
from xlmrxl.corpus.tasks import EmbedTask, null_lists

OPTS = dict(progress=False, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def mlm(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("owns_mlm"), spm_dir)


@pytest.fixture(scope="module")
def clf(spm_dir, tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("owns_clf"), spm_dir, "XLMRobertaXLForSequenceClassification", num_labels=3
    )


def _embeddings(out) -> dict:
    return {k: r["embedding"] for k, r in by_id(read_output(out)).items()}


# ---------------------------------------------------------------------------------------------------------------
# pyarrow 14+: null lists of zero length
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("valid", [[True, False, True], [False, False], [True], []])
def test_null_lists_round_trip_through_parquet(valid):
    valid = np.array(valid, dtype=bool)
    values = np.arange(valid.sum() * 4, dtype=np.float32).reshape(-1, 4) if valid.any() else None
    arr = null_lists(values, valid, pa.float32())
    assert arr.type == pa.list_(pa.float32()) and arr.null_count == int((~valid).sum())
    assert all(arr.value_lengths()[i].as_py() in (None, 0) for i in np.flatnonzero(~valid))
    buf = io.BytesIO()
    pq.write_table(pa.table({"v": arr}), buf)  # pyarrow < 22: "Lists with non-zero length null components" before
    buf.seek(0)
    got = pq.read_table(buf).column("v").to_pylist()
    want = iter(values.tolist() if values is not None else [])
    assert got == [next(want) if ok else None for ok in valid]


def test_error_rows_of_every_vector_column_are_written(mlm, clf, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a fine row\n\nanother fine row\n")  # the empty line is an error row
    for task, model, cols in (("embed", mlm, ["embedding"]), ("classify", clf, ["logits", "probabilities"])):
        s = xlmrxl.corpus.run(task, model, src, tmp_path / task, **OPTS)
        assert s["complete"] and s["error_rows"] == 1
        rows = by_id(read_output(tmp_path / task))
        assert rows["in.txt:1"]["error"] == "empty text"
        for c in cols:
            assert rows["in.txt:1"][c] is None and len(rows["in.txt:0"][c]) == len(rows["in.txt:2"][c]) > 0


def test_float16_vectors_need_pyarrow_15(monkeypatch):
    monkeypatch.setattr(pa, "__version__", "14.0.2")
    with pytest.raises(ValueError, match=r"vector_dtype='float16' needs pyarrow >= 15.*14\.0\.2"):
        EmbedTask.check_options({"vector_dtype": "float16"})
    EmbedTask.check_options({"vector_dtype": "float32"})


# ---------------------------------------------------------------------------------------------------------------
# keys: the suffix counts, collisions are errors
# ---------------------------------------------------------------------------------------------------------------
def test_same_stem_other_suffix_gets_its_own_key(mlm, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(3)))
    (d / "a.txt").write_text("\n".join(texts(2, start=50)) + "\n")
    s = xlmrxl.corpus.run("embed", mlm, d, tmp_path / "out", **OPTS)
    assert s["complete"] and s["rows"] == 5 and s["blocks"] == 2
    ids = read_output(tmp_path / "out").column("id").to_pylist()
    assert sorted(ids) == ["a.jsonl:0", "a.jsonl:1", "a.jsonl:2", "a.txt:0", "a.txt:1"]
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 2


def test_colliding_keys_are_refused_naming_both_files(mlm, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "a.txt").write_text("one\n")
    with pytest.raises(ValueError, match=r"x/a\.txt.*y/a\.txt.*share the key 'a\.txt'"):
        xlmrxl.corpus.run("embed", mlm, [tmp_path / "x" / "a.txt", tmp_path / "y" / "a.txt"], tmp_path / "o", **OPTS)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------------------
# only our blocks are results
# ---------------------------------------------------------------------------------------------------------------
def _hundred(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts(100))))
    return src


def test_stale_blocks_after_moving_the_manifest_are_refused(mlm, tmp_path):
    src, out = _hundred(tmp_path), tmp_path / "out"
    xlmrxl.corpus.run("embed", mlm, src, out, rows_per_block=10, **OPTS)
    with pytest.raises(ValueError, match="other settings.*rows_per_block"):
        xlmrxl.corpus.run("embed", mlm, src, out, rows_per_block=16, **OPTS)
    shutil.move(out / "_manifest.json", tmp_path / "old_manifest.json")  # the advice for a broken manifest
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match=r"not blocks of this run.*new output directory.*move them away"):
        xlmrxl.corpus.run("embed", mlm, src, out, rows_per_block=16, **OPTS)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing removed, nothing written
    # following the message: a fresh directory gives every row once
    s = xlmrxl.corpus.run("embed", mlm, src, tmp_path / "fresh", rows_per_block=16, **OPTS)
    assert s["rows"] == 100 and len(read_output(tmp_path / "fresh")) == 100
    # ... or moving the old blocks away
    for p in out.glob("part-*"):
        p.unlink()
    shutil.rmtree(out / "_commits")
    s = xlmrxl.corpus.run("embed", mlm, src, out, rows_per_block=16, **OPTS)
    assert s["complete"] and len(read_output(out)) == 100


def test_another_tools_part_file_is_refused(mlm, tmp_path):
    src = _hundred(tmp_path)
    foreign = pa.table({"id": ["x"], "value": [1]})
    new = tmp_path / "new"
    new.mkdir()
    pq.write_table(foreign, new / "part-00000.parquet")
    with pytest.raises(FileExistsError, match=r"part-00000\.parquet.*new output directory"):
        xlmrxl.corpus.run("embed", mlm, src, new, rows_per_block=50, **OPTS)
    out = tmp_path / "out"
    xlmrxl.corpus.run("embed", mlm, src, out, rows_per_block=50, **OPTS)
    pq.write_table(foreign, out / "part-00000.parquet")  # dropped in beside our finished run
    with pytest.raises(FileExistsError, match=r"part-00000\.parquet"):
        xlmrxl.corpus.run("embed", mlm, src, out, rows_per_block=50, **OPTS)
    (out / "part-00000.parquet").unlink()
    s = xlmrxl.corpus.run("embed", mlm, src, out, rows_per_block=50, **OPTS)  # resume: nothing to compute
    assert s["complete"] and not s["computed_blocks"] and len(read_output(out)) == 100


# ---------------------------------------------------------------------------------------------------------------
# formats: parsed, never read as text lines
# ---------------------------------------------------------------------------------------------------------------
def test_csv_tsv_json_jsonl_are_parsed_by_their_format(mlm, tmp_path):
    rows = texts(5) + ['a "quoted", multi-line\ntext, with commas']
    d = tmp_path / "in"
    d.mkdir()
    (d / "plain.txt").write_text("\n".join(r.replace("\n", " ") for r in rows[:5]) + "\n")
    import csv

    for name, delim in (("c.csv", ","), ("t.tsv", "\t")):
        with open(d / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter=delim)
            w.writerow(["id", "body", "other"])
            for i, r in enumerate(rows):
                w.writerow([f"{name}-{i}", r, "x"])
    (d / "o.json").write_text(json.dumps([{"id": f"o{i}", "body": r} for i, r in enumerate(rows)]))
    (d / "l.jsonl").write_text("".join(json.dumps({"body": r}) + "\n" for r in rows))
    out = tmp_path / "out"
    s = xlmrxl.corpus.run("embed", mlm, d, out, text_column="body", rows_per_block=4, **OPTS)
    assert s["rows"] == 4 * 6 + 5 and s["complete"]
    got = by_id(read_output(out))
    assert got["plain.txt:0"]["error"] is None  # a text file is one text per line, whatever the column's name
    # the same texts give the same vectors whatever the format: the header and JSON syntax are never embedded
    ref = _embeddings(
        xlmrxl.corpus.run("embed", mlm, d / "l.jsonl", tmp_path / "ref", text_column="body", **OPTS)["output"]
    )
    for i in range(6):
        for key in (f"c.csv-{i}", f"t.tsv-{i}", f"o{i}", f"l.jsonl:{i}"):
            assert got[key]["error"] is None, (key, got[key]["error"])
            np.testing.assert_allclose(got[key]["embedding"], ref[f"l.jsonl:{i}"], atol=1e-6)
    assert not any(k.startswith(("c.csv:", "t.tsv:")) for k in got)  # every csv row kept its id column


def test_plain_strings_in_json_and_jsonl_are_the_text(mlm, tmp_path):
    rows = texts(3)
    (tmp_path / "s.json").write_text(json.dumps(rows))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s.txt").write_text("\n".join(rows) + "\n")
    ref = _embeddings(xlmrxl.corpus.run("embed", mlm, tmp_path / "s.txt", tmp_path / "ot", **OPTS)["output"])
    for name in ("s.json", "s.jsonl"):
        emb = _embeddings(xlmrxl.corpus.run("embed", mlm, tmp_path / name, tmp_path / f"o-{name}", **OPTS)["output"])
        assert sorted(emb) == [f"{name}:{i}" for i in range(3)]
        for i in range(3):
            np.testing.assert_allclose(emb[f"{name}:{i}"], ref[f"s.txt:{i}"], atol=1e-6)


def test_bad_structured_inputs_get_clear_errors(mlm, tmp_path):
    def run(name, content, **kw):
        (tmp_path / name).write_bytes(content)
        return xlmrxl.corpus.run("embed", mlm, tmp_path / name, tmp_path / f"o-{name}", **OPTS, **kw)

    with pytest.raises(ValueError, match=r"has no column 'text' in its header.*\['id', 'body'\].*text_column="):
        run("h.csv", b"id,body\n1,hello\n")
    with pytest.raises(ValueError, match=r"not valid JSON.*name the file \.jsonl"):
        run("lines.json", b'{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"holds a JSON dict, not a list"):
        run("d.json", b'{"text": "a"}')
    with pytest.raises(ValueError, match=r"compressed \(\.gz\).*decompress"):
        run("x.jsonl.gz", b"\x1f\x8b")
    with pytest.raises(ValueError, match="empty.*header"):
        run("e.csv", b"")
    # bad rows of a good file are that row's error, every row kept
    run("r.csv", b'id,text\na,fine\nb,"two",fields\n\nd,\xff\n')
    rows = by_id(read_output(tmp_path / "o-r.csv"))
    assert rows["a"]["error"] is None
    assert "3 fields, the header 2" in rows["b"]["error"]
    assert rows["r.csv:2"]["error"] == "empty line"
    assert "not valid UTF-8" in rows["r.csv:3"]["error"]
    run("j.json", b'["fine", 3, {"id": "x", "text": null}]')
    rows = by_id(read_output(tmp_path / "o-j.json"))
    assert rows["j.json:0"]["error"] is None and "not a JSON object or string" in rows["j.json:1"]["error"]
    assert "missing value in column 'text'" in rows["x"]["error"]


def test_csv_records_split_as_the_csv_module_reads_them():
    """Block boundaries are byte offsets of records: quoted newlines, doubled quotes and a quote inside an unquoted
    field (common in tsv: 5" screen) must split exactly as csv.reader parses."""
    import csv
    import random

    from xlmrxl.corpus import formats

    rng = random.Random(0)
    pieces = ["a", " ", '"', ",", "\t", "\n", "\r\n", "é", '""']
    for _ in range(500):
        fmt = rng.choice(["csv", "tsv"])
        rows = [["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(3)] for _ in range(4)]
        buf = io.StringIO(newline="")
        quoting = rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
        csv.writer(buf, delimiter=formats.DELIMITERS[fmt], quoting=quoting).writerows(rows)
        raws = [raw for _, raw in formats.records(io.BytesIO(buf.getvalue().encode()), fmt)]
        assert [formats.parse_record(raw, fmt)[0] for raw in raws] == rows
    unquoted = b'id\ttext\n1\tHe said "hi\n2\t5" screen\n'
    raws = [raw for _, raw in formats.records(io.BytesIO(unquoted), "tsv")]
    assert [formats.parse_record(raw, "tsv")[0] for raw in raws] == [
        ["id", "text"],
        ["1", 'He said "hi'],
        ["2", '5" screen'],
    ]
