"""``xlmrxl serve`` started from the CLI on tiny checkpoints: every route's answers equal the offline pipelines / the
model run one input at a time (fp32 within 1e-6) whatever batching the server chose, the ``openai`` client against
``/v1/embeddings``, ``/health`` / ``/info`` / ``/metrics``, the API key, and the engine's batching rules in-process."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _serve import Server, make_checkpoint, metric, texts

import xlmrxl
from xlmrxl.serve.engine import Engine, Overloaded
from xlmrxl.serve.runners import Row, Runner, infer_task, sentence_transformers_defaults

TOL = 1e-6


@pytest.fixture(scope="module")
def mlm(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve_mlm"), spm_dir, max_position_embeddings=130)


@pytest.fixture(scope="module")
def clf(spm_dir, tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("serve_clf"),
        spm_dir,
        "XLMRobertaXLForSequenceClassification",
        num_labels=3,
        id2label={0: "neg", 1: "neu", 2: "pos"},
        max_position_embeddings=130,
    )


@pytest.fixture(scope="module")
def reranker(spm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_rerank")
    return make_checkpoint(
        d, spm_dir, "XLMRobertaXLForSequenceClassification", num_labels=1, max_position_embeddings=130
    )


@pytest.fixture(scope="module")
def embed_server(mlm, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_logs") / "embed.log"
    s = Server(mlm, "--task", "embed", "--pooling", "mean", "--max-batch-tokens", "200", log=log)
    yield s
    s.stop()


def offline_embed(model_dir, inputs, normalize):
    pipe = xlmrxl.pipeline("feature-extraction", model=model_dir, pooling="mean", normalize=normalize)
    return pipe(inputs, batch_size=1).numpy()


# ---------------------------------------------------------------------------------------------------------------
# routes vs offline
# ---------------------------------------------------------------------------------------------------------------
def test_embed_equals_offline_whatever_the_batching(embed_server, mlm):
    inputs = texts(40)
    with embed_server.client() as c, ThreadPoolExecutor(8) as pool:  # concurrent requests share batches
        chunks = [inputs[i : i + 5] for i in range(0, 40, 5)]
        answers = list(pool.map(lambda ch: c.post("/embed", json={"inputs": ch, "normalize": False}), chunks))
        one = c.post("/embed", json={"inputs": inputs[0]})  # a single string: still a list of one vector
        metrics = c.get("/metrics").text
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    got = np.array([v for a in answers for v in a.json()])
    want = offline_embed(mlm, inputs, normalize=False)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL
    assert one.status_code == 200 and len(one.json()) == 1
    want_n = offline_embed(mlm, inputs[:1], normalize=True)  # TEI's default: normalize=true
    assert np.abs(np.array(one.json()) - want_n).max() <= TOL
    assert metric(metrics, "xlmrxl_batch_tokens_count") >= 2  # the 200-token budget split the work
    assert metric(metrics, "xlmrxl_padding_avoided_tokens_total") > 0
    assert metric(metrics, "xlmrxl_requests_total") >= 8


def test_large_client_batch_is_split_and_reassembled_in_order(embed_server, mlm):
    inputs = texts(30, start=7)  # ~30 * 20 tokens > the 200-token budget: several model batches
    with embed_server.client() as c:
        before = metric(c.get("/metrics").text, "xlmrxl_batch_tokens_count")
        r = c.post("/embed", json={"inputs": inputs, "normalize": False})
        after = metric(c.get("/metrics").text, "xlmrxl_batch_tokens_count")
    assert r.status_code == 200
    assert after - before >= 2
    assert np.abs(np.array(r.json()) - offline_embed(mlm, inputs, normalize=False)).max() <= TOL


def test_openai_client_embeddings(embed_server, mlm):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=embed_server.url + "/v1", api_key="unused")
    inputs = texts(6, start=50)
    want = offline_embed(mlm, inputs, normalize=True)
    got = client.embeddings.create(model="tiny", input=inputs)  # the client asks base64 and decodes it
    assert [d.index for d in got.data] == list(range(6))
    assert np.abs(np.array([d.embedding for d in got.data]) - want).max() <= TOL
    assert got.model == "tiny"
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(mlm)
    ids = tok(inputs, return_attention_mask=False)["input_ids"]
    assert got.usage.prompt_tokens == got.usage.total_tokens == sum(len(x) for x in ids)
    floats = client.embeddings.create(model="tiny", input=inputs[0], encoding_format="float")
    assert np.abs(np.array(floats.data[0].embedding) - want[0]).max() <= TOL
    by_ids = client.embeddings.create(model="tiny", input=ids[1], encoding_format="float")
    assert np.abs(np.array(by_ids.data[0].embedding) - want[1]).max() <= TOL


def test_openai_base64_is_little_endian_float32(embed_server, mlm):
    with embed_server.client() as c:
        r = c.post("/v1/embeddings", json={"input": "hello there", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(r["data"][0]["embedding"]), dtype="<f4")
    assert np.abs(vec - offline_embed(mlm, ["hello there"], normalize=True)[0]).max() <= TOL


def test_tokenize_equals_the_tokenizer(embed_server, mlm):
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(mlm)
    with embed_server.client() as c:
        r = c.post("/tokenize", json={"inputs": ["hello world", "abc"]}).json()
    want = tok(["hello world", "abc"], return_attention_mask=False)["input_ids"]
    assert [[t["id"] for t in row] for row in r] == want
    assert r[0][0]["special"] and not r[0][1]["special"] and r[0][1]["text"] == tok.convert_ids_to_tokens(want[0][1])


def test_truncation_left_and_right(embed_server, mlm):
    long = " ".join(texts(12))  # far over 128 tokens
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(mlm)
    model = xlmrxl.XLMRobertaXLModel.from_pretrained(str(mlm), add_pooling_layer=False).eval()
    with embed_server.client() as c:
        refused = c.post("/embed", json={"inputs": long})
        assert refused.status_code == 413 and "truncate" in refused.json()["error"]
        for side in ("right", "left"):
            r = c.post("/embed", json={"inputs": long, "truncate": True, "truncation_direction": side.title()})
            assert r.status_code == 200, r.text
            tok.truncation_side = side
            ids = tok(long, truncation=True, max_length=128, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                want = torch.nn.functional.normalize(model(input_ids=ids).last_hidden_state.mean(1), dim=-1)
            assert np.abs(np.array(r.json()) - want.numpy()).max() <= TOL


def test_health_info_metrics(embed_server):
    with embed_server.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        info = c.get("/info").json()
        text = c.get("/metrics").text
    assert info["task"] == "embed" and info["max_batch_tokens"] == 200 and info["max_input_length"] == 128
    assert info["model_dtype"] == "float32" and info["model_device"] == ["cpu"] and info["version"]
    for name in ("xlmrxl_queue_depth", "xlmrxl_batch_requests", "xlmrxl_request_seconds", "xlmrxl_requests_total"):
        assert name in text


def test_classify_predict_and_rerank(clf, reranker, tmp_path):
    model = xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(str(clf)).eval()
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(clf)
    inputs = texts(9, start=3)
    with torch.no_grad():
        logits = [model(**tok(t, return_tensors="pt")).logits[0] for t in inputs]
    server = Server(clf, log=tmp_path / "clf.log")  # --task inferred: classify
    try:
        with server.client() as c:
            batch = c.post("/predict", json={"inputs": inputs}).json()
            raw = c.post("/predict", json={"inputs": inputs[0], "raw_scores": True}).json()
            pairs = c.post("/predict", json={"inputs": [[inputs[1], inputs[2]]], "raw_scores": True}).json()
            not_pairs = c.post("/predict", json={"inputs": [["a", "b", "c"]]})
            wrong = c.post("/embed", json={"inputs": "x"})
    finally:
        server.stop()
    for got, lg in zip(batch, logits):
        probs = torch.softmax(lg, -1)
        assert got[0]["label"] == ["neg", "neu", "pos"][int(probs.argmax())]
        by_label = {g["label"]: g["score"] for g in got}
        assert max(abs(by_label[k] - float(probs[i])) for i, k in enumerate(["neg", "neu", "pos"])) <= TOL
    assert max(abs(g["score"] - float(logits[0][["neg", "neu", "pos"].index(g["label"])])) for g in raw) <= TOL
    assert wrong.status_code == 422 and "--task embed" in wrong.json()["error"]
    with torch.no_grad():
        pair_logits = model(**tok(inputs[1], inputs[2], return_tensors="pt")).logits[0]
    got = {g["label"]: g["score"] for g in pairs[0]}
    assert max(abs(got[k] - float(pair_logits[i])) for i, k in enumerate(["neg", "neu", "pos"])) <= TOL
    assert not_pairs.status_code == 422 and "pairs" in not_pairs.json()["error"]

    rmodel = xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(str(reranker)).eval()
    query, docs = "what is this?", texts(5, start=30)
    with torch.no_grad():
        want = [torch.sigmoid(rmodel(**tok(query, d, return_tensors="pt")).logits[0, 0]).item() for d in docs]
    server = Server(reranker, log=tmp_path / "rerank.log")  # one label: inferred rerank
    try:
        with server.client() as c:
            ranked = c.post("/rerank", json={"query": query, "texts": docs, "return_text": True}).json()
    finally:
        server.stop()
    assert [r["index"] for r in ranked] == sorted(range(5), key=lambda i: -want[i])
    assert max(abs(r["score"] - want[r["index"]]) for r in ranked) <= TOL
    assert all(r["text"] == docs[r["index"]] for r in ranked)


def test_fill_mask_equals_the_pipeline(mlm, tmp_path):
    inputs = texts(6, start=11, mask=True)
    pipe = xlmrxl.pipeline("fill-mask", model=mlm, top_k=3)
    server = Server(mlm, log=tmp_path / "fm.log")  # a masked-LM checkpoint: inferred fill-mask
    try:
        with server.client() as c:
            got = c.post("/fill-mask", json={"inputs": inputs, "top_k": 3}).json()
            bad = c.post("/fill-mask", json={"inputs": "no mask here"})
    finally:
        server.stop()
    for g, text in zip(got, inputs):
        want = pipe(text)
        assert [p["token"] for p in g[0]] == [w["token"] for w in want]
        assert max(abs(p["score"] - w["score"]) for p, w in zip(g[0], want)) <= TOL
    assert bad.status_code == 422 and "<mask>" in bad.json()["error"]


def test_api_key_and_not_ready(mlm, tmp_path):
    server = Server(mlm, "--task", "embed", env={"XLMRXL_API_KEY": "s3cret"}, log=tmp_path / "key.log")
    try:
        with server.client() as c:
            assert c.get("/health").status_code == 200  # health stays open for probes
            r = c.post("/embed", json={"inputs": "hi"})
            assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
            assert c.post("/embed", json={"inputs": "hi"}, headers={"Authorization": "Bearer nope"}).status_code == 401
            ok = c.post("/embed", json={"inputs": "hi"}, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
    finally:
        server.stop()


def test_task_inference(mlm, clf, reranker, tmp_path):
    assert (infer_task(mlm), infer_task(clf), infer_task(reranker)) == ("fill-mask", "classify", "rerank")
    (tmp_path / "hparams.yaml").write_text("pretrained_model: x\n")
    assert infer_task(tmp_path) == "comet"


def test_sentence_transformers_directory_settings(tmp_path):
    import json

    modules = [{"path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    old_style = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(old_style))
    assert sentence_transformers_defaults(tmp_path) == {"pooling": "mean", "normalize": False}
    modules.append({"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    assert sentence_transformers_defaults(tmp_path) == {"pooling": "cls", "normalize": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(ValueError, match="'max' is not served"):
        sentence_transformers_defaults(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# the engine, in-process
# ---------------------------------------------------------------------------------------------------------------
class _Echo:
    """A fake runner: each row's result is its item; records the batches."""

    def __init__(self):
        self.batches = []

    def forward(self, rows):
        self.batches.append([r.tokens for r in rows])
        return [r.item for r in rows]


def test_engine_budget_order_and_drop():
    async def main():
        runner = _Echo()
        engine = Engine([runner], max_batch_tokens=10, max_concurrent_requests=3)
        engine.start()
        a = engine.enqueue([Row(("a", i), 4) for i in range(5)])
        b = engine.enqueue([Row(("b", i), 3) for i in range(4)])
        c = engine.enqueue([Row(("c", 0), 25)])  # longer than the budget: runs alone
        with pytest.raises(Overloaded):
            engine.enqueue([Row(("d", 0), 1)])
        ra, rb, rc = await asyncio.gather(a.future, b.future, c.future)
        assert ra == [("a", i) for i in range(5)] and rb == [("b", i) for i in range(4)] and rc == [("c", 0)]
        # first in, first out, cut at 10 tokens; a's last row and b's first two share a batch; 25 runs alone
        assert runner.batches == [[4, 4], [4, 4], [4, 3, 3], [3, 3], [25]]
        dropped = []
        engine.on_drop = dropped.append
        e = engine.enqueue([Row(("e", i), 10) for i in range(50)])
        e.cancel()
        await asyncio.sleep(0.05)
        assert e.future.cancelled() and sum(dropped) >= 48 and engine.active == 0
        await engine.stop()

    asyncio.run(main())


def test_cli_errors(tmp_path, capsys):
    from xlmrxl.cli import _parser, main

    args = _parser().parse_args(["serve", "somewhere"])  # never another address unless --host says so
    assert (args.host, args.port, args.max_batch_tokens) == ("127.0.0.1", 8080, 16384)
    assert (args.max_concurrent_requests, args.max_client_batch_size, args.api_key, args.task) == (512, 32, None, None)

    assert main(["serve", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--task", "embed", "--max-batch-tokens", "0"]) == 1
    assert "max_batch_tokens=0" in capsys.readouterr().err


def test_a_model_that_fails_to_load_exits_1(mlm, tmp_path):
    import shutil
    import subprocess
    import sys

    from _serve import ROOT, free_port

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "sentencepiece.bpe.model", "tokenizer_config.json"):
        if (mlm / name).exists():
            shutil.copy(mlm / name, broken / name)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cmd = [sys.executable, "-m", "xlmrxl", "serve", str(broken), "--port", str(free_port()), "--device", "cpu"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "did not load" in r.stderr, r.stderr[-2000:]


def test_engine_failed_batch_fails_its_requests_only():
    class Flaky(_Echo):
        def forward(self, rows):
            if any(r.item == "boom" for r in rows):
                raise RuntimeError("CUDA error: device-side assert")
            return super().forward(rows)

    async def main():
        engine = Engine([Flaky()], max_batch_tokens=2, max_concurrent_requests=8)
        engine.start()
        bad = engine.enqueue([Row("ok", 1), Row("boom", 1), Row("late", 1)])
        good = engine.enqueue([Row("fine", 1)])
        with pytest.raises(RuntimeError, match="device-side"):
            await bad.future
        assert await good.future == ["fine"]
        assert engine.active == 0 and not engine.jobs
        await engine.stop()

    asyncio.run(main())


def test_int4_quantization_on_load(spm_dir, tmp_path):
    d = make_checkpoint(tmp_path / "m", spm_dir, hidden_size=128, intermediate_size=256, num_attention_heads=4)
    runner = Runner(str(d), "embed", device="cpu", quantization="int4", pooling="mean")
    inputs = texts(4)
    got = np.stack(runner.forward(runner.rows(inputs, truncate=True)))
    model = xlmrxl.XLMRobertaXLModel.from_pretrained(str(d), quantization="int4", add_pooling_layer=False)
    pipe = xlmrxl.pipeline("feature-extraction", model=model.eval(), tokenizer=d, pooling="mean")
    assert np.abs(got - pipe(inputs, batch_size=1).numpy()).max() <= 1e-5
