"""xlmrxl.corpus.run on the local engine: every row exactly once, numbers independent of block size and batch
composition (fp32 within 1e-6 of one row at a time) and equal to the pipelines / the model, bad rows reported,
resume after a deleted or corrupted block, a crash mid-write, refused settings, bounded memory, the CLI.

The helpers (tiny checkpoints, inputs, ``read_output``) are shared with test_corpus_ray.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _tiny_checkpoint import make_checkpoint  # noqa: F401  (re-exported to the tests that import it here)

import xlmrxl
import xlmrxl.corpus
import xlmrxl.ray
from xlmrxl.tokenizer import CORPUS_PATH

ROOT = Path(__file__).resolve().parents[1]
LINES = [ln for ln in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def texts(n, start=0, mask_every=0):
    out = []
    for i in range(start, start + n):
        t = LINES[i % len(LINES)][: 20 + (i * 7) % 90]
        if mask_every and i % mask_every == 0:
            t = t + " <mask>."
        out.append(t)
    return out


def write_inputs(d: Path, n_parquet=23, n_jsonl=17, n_text=11) -> Path:
    """A directory with one parquet (ids), one jsonl (ids) and one text file (generated ids)."""
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"id": [f"p{i}" for i in range(n_parquet)], "text": texts(n_parquet)}),
        d / "a.parquet",
        row_group_size=5,
    )
    with open(d / "b.jsonl", "w", encoding="utf-8") as fh:
        for i, t in enumerate(texts(n_jsonl, start=100)):
            fh.write(json.dumps({"id": f"j{i}", "text": t}, ensure_ascii=False) + "\n")
    (d / "c.txt").write_text("\n".join(texts(n_text, start=200)) + "\n", encoding="utf-8")
    return d


def read_output(out) -> pa.Table:
    return pq.read_table(out)


def by_id(table: pa.Table, id_column="id") -> dict:
    return {r[id_column]: r for r in table.to_pylist()}


def max_vec_err(a: dict, b: dict, column: str) -> float:
    err = 0.0
    for k, r in a.items():
        if r[column] is None:
            assert b[k][column] is None, k
            continue
        err = max(err, float(np.abs(np.asarray(r[column]) - np.asarray(b[k][column])).max()))
    return err


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these tiny models gain nothing from more, and the CI machine is shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def mlm(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("corpus_mlm"), spm_dir)


@pytest.fixture(scope="module")
def clf(spm_dir, tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("corpus_clf"),
        spm_dir,
        "XLMRobertaXLForSequenceClassification",
        num_labels=3,
        id2label={0: "neg", 1: "neu", 2: "pos"},
    )


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("corpus_in"))


@pytest.fixture(scope="module")
def embed_runs(mlm, corpus_dir, tmp_path_factory):
    """The same embedding run twice: small blocks / mixed batches, and one row per batch in one block per file."""
    base = tmp_path_factory.mktemp("corpus_embed")
    opts = dict(pooling="mean", normalize=True, progress=False, device="cpu")
    small = xlmrxl.corpus.run("embed", mlm, corpus_dir, base / "small", rows_per_block=6, max_batch_tokens=90, **opts)
    single = xlmrxl.corpus.run(
        "embed", mlm, corpus_dir, base / "single", rows_per_block=1000, max_batch_tokens=1, **opts
    )
    return base, small, single


# ---------------------------------------------------------------------------------------------------------------
# every row once, same numbers
# ---------------------------------------------------------------------------------------------------------------
def test_every_row_exactly_once_with_stable_ids(embed_runs):
    base, small, _ = embed_runs
    table = read_output(base / "small")
    ids = table.column("id").to_pylist()
    want = [f"p{i}" for i in range(23)] + [f"j{i}" for i in range(17)] + [f"c.txt:{i}" for i in range(11)]
    assert sorted(ids) == sorted(want) and len(ids) == len(set(ids)) == 51
    assert small["complete"] and small["rows"] == 51 and small["error_rows"] == 0
    assert small["blocks"] == 4 + 3 + 2  # blocks never span two files
    # each block keeps its rows in input order
    first = pq.read_table(sorted((base / "small").glob("part-a-parquet-*.parquet"))[0]).column("id").to_pylist()
    assert first == [f"p{i}" for i in range(6)]
    manifest = json.loads((base / "small" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["finished_rows"] == 51 and len(manifest["blocks"]) == 9


def test_same_numbers_any_block_size_or_batch(embed_runs):
    base, _, single = embed_runs
    assert single["blocks"] == 3
    a, b = by_id(read_output(base / "small")), by_id(read_output(base / "single"))
    err = max_vec_err(a, b, "embedding")
    assert err <= 1e-6, f"blocks of 6 / batches of 90 tokens vs one row per batch: max error {err:.3g}"


def test_embed_matches_pipeline(mlm, embed_runs):
    base, _, _ = embed_runs
    table = read_output(base / "small")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    out = by_id(table)
    pipe = xlmrxl.pipeline("feature-extraction", model=str(mlm), device="cpu", pooling="mean", normalize=True)
    want = texts(23)
    ref = pipe(want, batch_size=1).numpy()
    got = np.stack([np.asarray(out[f"p{i}"]["embedding"]) for i in range(23)])
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max())
    assert err <= 1e-5, f"corpus embed vs xlmrxl.pipeline: max error {err:.3g}"


@pytest.mark.skipif(
    int(pa.__version__.split(".")[0]) < 15, reason="parquet float16 needs pyarrow >= 15 (refused before)"
)
def test_embed_cls_float16(mlm, tmp_path):
    rows = texts(9)
    pq.write_table(pa.table({"text": rows}), tmp_path / "in.parquet")
    xlmrxl.corpus.run(
        "embed", mlm, tmp_path / "in.parquet", tmp_path / "out", vector_dtype="float16", pooling="cls", progress=False
    )
    table = read_output(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float16())
    assert table.column("id").to_pylist() == [f"in.parquet:{i}" for i in range(9)]  # generated ids
    pipe = xlmrxl.pipeline("feature-extraction", model=str(mlm), device="cpu", pooling="cls")
    ref = pipe(rows, batch_size=1).numpy()
    got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.abs(got - ref.astype(np.float16).astype(np.float32)).max() <= 1e-3 * np.abs(ref).max()


def test_classify_matches_model(clf, tmp_path):
    rows = texts(13, start=40)
    with open(tmp_path / "in.jsonl", "w") as fh:
        for i, t in enumerate(rows):
            fh.write(json.dumps({"id": i, "text": t}) + "\n")
    xlmrxl.corpus.run("classify", clf, tmp_path / "in.jsonl", tmp_path / "out", rows_per_block=5, progress=False)
    out = by_id(read_output(tmp_path / "out"))
    model = xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(str(clf)).eval()
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(str(clf))
    for i, t in enumerate(rows):
        with torch.inference_mode():
            logits = model(**tok(t, return_tensors="pt")).logits[0]
        got = out[str(i)]  # jsonl ids are written as strings
        err = float((torch.tensor(got["logits"]) - logits).abs().max())
        assert err <= 1e-5, f"row {i}: logits max error {err:.3g}"
        assert np.allclose(got["probabilities"], logits.softmax(-1).numpy(), atol=1e-6)
        assert got["label_id"] == int(logits.argmax()) and got["label"] == ["neg", "neu", "pos"][got["label_id"]]


def test_fill_mask_matches_pipeline(mlm, tmp_path):
    rows = texts(12, mask_every=1)
    rows[3] = "x <mask>. y <mask>"
    pq.write_table(pa.table({"id": list(range(12)), "text": rows}), tmp_path / "in.parquet")
    xlmrxl.corpus.run("fill-mask", mlm, tmp_path / "in.parquet", tmp_path / "out", top_k=3, progress=False)
    table = read_output(tmp_path / "out")
    assert table.schema.field("id").type == pa.int64()  # the input's id type is kept
    out = by_id(table)
    fill = xlmrxl.pipeline("fill-mask", model=str(mlm), device="cpu", top_k=3)
    for i, t in enumerate(rows):
        ref = fill(t)
        ref = [ref] if isinstance(ref[0], dict) else ref
        got = out[i]["predictions"]
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert [p["token"] for p in g] == [p["token"] for p in r]
            assert [p["token_str"] for p in g] == [p["token_str"] for p in r]
            assert np.allclose([p["score"] for p in g], [p["score"] for p in r], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# bad rows
# ---------------------------------------------------------------------------------------------------------------
def test_bad_rows_are_reported_never_dropped(mlm, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    long_text = " ".join(LINES[:20])
    (d / "t.txt").write_bytes(b"fine text\n\n   \nbad \xff\xfe bytes\n" + long_text.encode() + b"\nlast")
    pq.write_table(pa.table({"id": ["a", "b", None], "text": ["ok", None, "ok too"]}), d / "p.parquet")
    with open(d / "j.jsonl", "w") as fh:
        fh.write('{"id": "j0", "text": "good"}\n[1, 2]\n{broken\n{"id": "j3", "text": 7}\n{"id": "j4"}\n')
    s = xlmrxl.corpus.run("embed", mlm, d, tmp_path / "out", progress=False, rows_per_block=4)
    out = by_id(read_output(tmp_path / "out"))
    assert s["rows"] == 6 + 3 + 5 == len(read_output(tmp_path / "out"))
    errors = {k: r["error"] for k, r in out.items()}
    assert errors["t.txt:0"] is None and errors["t.txt:5"] is None and out["t.txt:0"]["embedding"] is not None
    assert errors["t.txt:1"] == errors["t.txt:2"] == "empty text"
    assert "not valid UTF-8" in errors["t.txt:3"]
    assert (
        "too long" in errors["t.txt:4"] and "truncate=True" in errors["t.txt:4"] and out["t.txt:4"]["embedding"] is None
    )
    assert errors["a"] is None and "missing value in column 'text'" in errors["b"]
    assert [r for r in read_output(tmp_path / "out").to_pylist() if r["id"] is None][0]["error"].startswith(
        "missing id"
    )
    assert errors["j0"] is None and "not a JSON object" in errors["j.jsonl:1"]
    assert "not a JSON object" in errors["j.jsonl:2"] and "holds a int" in errors["j3"]
    assert "missing value" in errors["j4"]
    assert s["error_rows"] == sum(e is not None for e in errors.values())
    # truncate=True computes the long row (first max_length tokens) instead of reporting it
    s2 = xlmrxl.corpus.run("embed", mlm, d / "t.txt", tmp_path / "out2", progress=False, truncate=True)
    t2 = by_id(read_output(tmp_path / "out2"))
    assert t2["t.txt:4"]["error"] is None and t2["t.txt:4"]["embedding"] is not None and s2["error_rows"] == 3
    # fill-mask: a row without <mask> is an error row
    xlmrxl.corpus.run("fill-mask", mlm, d / "t.txt", tmp_path / "out3", progress=False)
    assert "no <mask>" in by_id(read_output(tmp_path / "out3"))["t.txt:0"]["error"]


# ---------------------------------------------------------------------------------------------------------------
# resume, crash, refused settings
# ---------------------------------------------------------------------------------------------------------------
def test_resume_recomputes_only_deleted_or_corrupted_blocks(mlm, corpus_dir, tmp_path):
    out = tmp_path / "out"
    opts = dict(rows_per_block=4, pooling="cls", progress=False)
    corpus_dir = corpus_dir / "a.parquet"
    first = xlmrxl.corpus.run("embed", mlm, corpus_dir, out, **opts)
    before = by_id(read_output(out))
    again = xlmrxl.corpus.run("embed", mlm, corpus_dir, out, **opts)
    assert again["computed_blocks"] == [] and len(again["skipped_blocks"]) == first["blocks"]
    parts = sorted(out.glob("part-*.parquet"))
    parts[1].unlink()
    data = bytearray(parts[4].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: only the checksum sees it
    parts[4].write_bytes(bytes(data))
    third = xlmrxl.corpus.run("embed", mlm, corpus_dir, out, **opts)
    assert sorted(third["computed_blocks"]) == sorted(p.name[5:-8] for p in (parts[1], parts[4]))
    after = by_id(read_output(out))
    assert after.keys() == before.keys() and max_vec_err(after, before, "embedding") == 0.0


def test_crash_while_writing_never_counts_a_half_block(mlm, corpus_dir, tmp_path):
    """The worker dies after writing a block's temporary file, before the rename (XLMRXL_CORPUS_FAULT): the block is
    not counted, the blocks before it are; the rerun removes the temporary file and completes."""
    out, marker = tmp_path / "out", tmp_path / "killed"
    victim = "b-jsonl-" + hashlib.sha256(b"b.jsonl").hexdigest()[:8] + "-000001"
    cmd = [sys.executable, "-m", "xlmrxl", "corpus", "embed", "--model", str(mlm), "--input", str(corpus_dir)]
    cmd += ["--output", str(out), "--rows-per-block", "6", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, XLMRXL_CORPUS_FAULT=f"{victim}:{marker}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    crashed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 17 and marker.exists(), crashed.stderr[-2000:]
    assert not (out / f"part-{victim}.parquet").exists() and not (out / "_commits" / f"{victim}.json").exists()
    assert list(out.glob(f".part-{victim}.parquet.*.tmp")), "the half-written block should still be there"
    done = json.loads((out / "_manifest.json").read_text())
    assert not done["complete"]
    done_before = {p.stem for p in (out / "_commits").glob("*.json")}
    assert len(done_before) == 5  # a.parquet's 4 blocks and b.jsonl's first were committed before the crash
    summary = xlmrxl.corpus.run("embed", mlm, corpus_dir, out, rows_per_block=6, progress=False, device="cpu")
    assert victim in summary["computed_blocks"] and set(summary["skipped_blocks"]) == done_before
    assert summary["complete"]
    assert not list(out.glob(".part-*.tmp"))
    ids = read_output(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 51


def test_refuses_other_settings_and_foreign_directories(mlm, corpus_dir, tmp_path):
    out = tmp_path / "out"
    xlmrxl.corpus.run("embed", mlm, corpus_dir / "c.txt", out, progress=False)
    with pytest.raises(ValueError, match="other settings.*pooling"):
        xlmrxl.corpus.run("embed", mlm, corpus_dir / "c.txt", out, pooling="cls", progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        xlmrxl.corpus.run("embed", mlm, corpus_dir / "c.txt", foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    with pytest.raises(ValueError, match="overlap"):
        xlmrxl.corpus.run("embed", mlm, corpus_dir, corpus_dir / "out", progress=False)
    with pytest.raises(TypeError, match="unknown option.*top_k"):
        xlmrxl.corpus.run("embed", mlm, corpus_dir, tmp_path / "o2", top_k=3)
    with pytest.raises(ValueError, match="unknown task"):
        xlmrxl.corpus.run("translate", mlm, corpus_dir, tmp_path / "o2")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        xlmrxl.corpus.run("embed", mlm, str(tmp_path / "none-*.parquet"), tmp_path / "o2")


def test_missing_extras_give_clear_errors(mlm, corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"xlmrxl\[ray\]"):
        xlmrxl.corpus.run("embed", mlm, corpus_dir, tmp_path / "o", engine="ray")
    monkeypatch.setitem(sys.modules, "comet", None)
    with pytest.raises(ImportError, match="unbabel-comet"):
        xlmrxl.corpus.run("comet", mlm, corpus_dir, tmp_path / "o")


# ---------------------------------------------------------------------------------------------------------------
# streaming: memory does not grow with the input
# ---------------------------------------------------------------------------------------------------------------
def _short_rows(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "text": f"row {i} says hello"}) + "\n")
    return path


def test_local_engine_memory_is_bounded(spm_dir, tmp_path):
    small_model = make_checkpoint(
        tmp_path / "m", spm_dir, num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37
    )
    xlmrxl.corpus.run("embed", small_model, _short_rows(tmp_path / "warm.jsonl", 50), tmp_path / "warm", progress=False)
    peaks = {}
    for n in (2_000, 10_000):
        src = _short_rows(tmp_path / f"in{n}.jsonl", n)
        opts = dict(rows_per_block=500, max_batch_tokens=4096, progress=False)
        tracemalloc.start()
        s = xlmrxl.corpus.run("embed", small_model, src, tmp_path / f"out{n}", **opts)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert s["rows"] == n and s["complete"]
    assert len(read_output(tmp_path / "out10000")) == 10_000
    # five times the rows, (about) the same peak: blocks stream through, the input is never held whole
    assert peaks[10_000] < 1.5 * peaks[2_000], f"peak Python memory {peaks}"


# ---------------------------------------------------------------------------------------------------------------
# the command line, and the Predictor without Ray
# ---------------------------------------------------------------------------------------------------------------
def test_cli_corpus(mlm, corpus_dir, tmp_path, capsys):
    from xlmrxl.cli import main

    args = ["corpus", "embed", "--model", str(mlm), "--input", str(corpus_dir / "c.txt"), "--output", str(tmp_path)]
    assert main(args + ["--pooling", "mean", "--normalize", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["rows"] == 11
    assert main(args + ["--top-k", "3"]) == 1  # embed takes no top_k: one clear line on stderr
    assert "unknown option" in capsys.readouterr().err


def test_predictor_batch_equals_corpus_run(mlm, embed_runs):
    base, _, _ = embed_runs
    out = by_id(read_output(base / "single"))
    pred = xlmrxl.ray.Predictor(task="embed", model=str(mlm), pooling="mean", normalize=True, device="cpu")
    rows = texts(23)
    table = pred({"id": np.array([f"p{i}" for i in range(23)]), "text": np.array(rows)})
    assert table.column_names == ["id", "text", "embedding", "error"]
    got = by_id(table)
    assert max_vec_err({k: got[k] for k in got}, out, "embedding") <= 1e-6


def test_tokenization_runs_ahead_on_a_thread(mlm, corpus_dir, tmp_path, monkeypatch):
    from xlmrxl.corpus.worker import Worker

    threads = []
    real = Worker.read

    def spy(self, spec):
        threads.append(threading.current_thread().name)
        return real(self, spec)

    monkeypatch.setattr(Worker, "read", spy)
    xlmrxl.corpus.run("embed", mlm, corpus_dir / "b.jsonl", tmp_path / "out", rows_per_block=5, progress=False)
    assert threads == ["xlmrxl-corpus-reader"] * 4  # every block read and tokenized beside the model


def test_glob_and_list_inputs(mlm, corpus_dir, tmp_path):
    s = xlmrxl.corpus.run("embed", mlm, str(corpus_dir / "*.jsonl"), tmp_path / "g", progress=False)
    assert s["rows"] == 17 and read_output(tmp_path / "g").column("id").to_pylist() == [f"j{i}" for i in range(17)]
    s = xlmrxl.corpus.run(
        "embed", mlm, [corpus_dir / "c.txt", corpus_dir / "a.parquet"], tmp_path / "l", progress=False
    )
    assert s["rows"] == 11 + 23 and s["blocks"] == 2


def test_ray_init_connects_to_ray_address_else_starts_a_local_cluster(monkeypatch):
    from xlmrxl.corpus.ray_engine import ensure_ray

    class FakeRay:
        def __init__(self):
            self.calls = []

        def is_initialized(self):
            return False

        def init(self, **kw):
            self.calls.append(kw)

    fake = FakeRay()
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    ensure_ray(fake)
    assert fake.calls == [{}]  # ray.init() reads RAY_ADDRESS itself
    monkeypatch.delenv("RAY_ADDRESS")
    ensure_ray(fake)
    assert fake.calls[1]["include_dashboard"] is False
    assert str(ROOT) in fake.calls[1]["runtime_env"]["env_vars"]["PYTHONPATH"]


def test_out_of_memory_batches_retry_row_by_row_other_errors_fail_the_block(mlm, corpus_dir, tmp_path, monkeypatch):
    from xlmrxl.corpus.tasks import EmbedTask

    opts = dict(rows_per_block=100, pooling="mean", progress=False)
    ref = by_id(
        read_output(xlmrxl.corpus.run("embed", mlm, corpus_dir / "b.jsonl", tmp_path / "ref", **opts)["output"])
    )
    real = EmbedTask.forward

    def oom(self, items):
        if len(items) > 1 or len(items[0]) >= self._longest:  # batches, and rows as long as _longest
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(self, items)

    monkeypatch.setattr(EmbedTask, "forward", oom)
    monkeypatch.setattr(EmbedTask, "_longest", 10**9, raising=False)
    got = by_id(
        read_output(xlmrxl.corpus.run("embed", mlm, corpus_dir / "b.jsonl", tmp_path / "oom", **opts)["output"])
    )
    assert max_vec_err(got, ref, "embedding") <= 1e-6 and all(r["error"] is None for r in got.values())
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(str(mlm))
    lengths = {f"j{i}": len(tok(t)["input_ids"]) for i, t in enumerate(texts(17, start=100))}
    monkeypatch.setattr(EmbedTask, "_longest", max(lengths.values()), raising=False)
    got = by_id(
        read_output(xlmrxl.corpus.run("embed", mlm, corpus_dir / "b.jsonl", tmp_path / "oom2", **opts)["output"])
    )
    too_big = [k for k, n in lengths.items() if n == max(lengths.values())]
    assert too_big and all("out of memory even alone" in got[k]["error"] for k in too_big)
    assert all(got[k]["error"] is None for k in lengths if k not in too_big)

    def broken(self, items):
        raise ValueError("a bug")

    monkeypatch.setattr(EmbedTask, "forward", broken)
    with pytest.raises(ValueError, match="a bug"):
        xlmrxl.corpus.run("embed", mlm, corpus_dir / "b.jsonl", tmp_path / "bug", **opts)
    assert not list((tmp_path / "bug").glob("part-*")) and not list((tmp_path / "bug" / "_commits").glob("*.json"))
