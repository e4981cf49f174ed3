"""``xlmrxl serve`` under bad requests and faults, from outside (httpx against the CLI-started server): malformed JSON,
wrong types, empty and whitespace inputs, huge bodies, too many inputs, a full queue (429 at once), a client that
disconnects mid-request (its unstarted rows dropped), SIGTERM under load (every accepted request answered, exit 0).

``XLMRXL_SERVE_TEST_DELAY`` slows each model batch down so that requests are reliably in flight."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from _serve import Server, make_checkpoint, metric, texts

import xlmrxl


@pytest.fixture(scope="module")
def mlm(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("faults_mlm"), spm_dir, max_position_embeddings=130)


@pytest.fixture(scope="module")
def server(mlm, tmp_path_factory):
    log = tmp_path_factory.mktemp("faults_logs") / "server.log"
    args = ("--max-client-batch-size", "4", "--payload-limit", "20000", "--max-input-tokens", "16", "--auto-truncate")
    s = Server(mlm, "--task", "embed", *args, log=log)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slow_server(mlm, tmp_path_factory):
    log = tmp_path_factory.mktemp("faults_logs") / "slow.log"
    args = ("--task", "embed", "--max-concurrent-requests", "3", "--max-batch-tokens", "1")
    s = Server(mlm, *args, env={"XLMRXL_SERVE_TEST_DELAY": "0.3"}, log=log)
    yield s
    s.stop()


def _error(r: httpx.Response, status: int, error_type: str | None = None, words: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error"], body
    if error_type is not None:
        assert body["error_type"] == error_type, body
    assert words.lower() in body["error"].lower(), body


@pytest.mark.parametrize(
    "body, error_type, words",
    [
        (b"{not json", "validation", "json"),
        (b"[1, 2]", "validation", "dictionary"),
        (b'{"inputs": 5}', "validation", "inputs"),
        (b'{"inputs": ["a", 3]}', "validation", "inputs"),
        (b'{"inputs": "a", "normalize": [1]}', "validation", "normalize"),
        (b'{"inputs": "a", "truncation_direction": "up"}', "validation", "truncation_direction"),
        (b'{"text": "no inputs field"}', "validation", "inputs"),
        (b'{"inputs": ""}', "empty", "empty"),
        (b'{"inputs": ["fine", "  \\n\\t "]}', "empty", "inputs[1]"),
        (b'{"inputs": []}', "empty", "empty list"),
    ],
)
def test_bad_bodies_get_422(server, body, error_type, words):
    with server.client() as c:
        _error(c.post("/embed", content=body, headers={"content-type": "application/json"}), 422, error_type, words)


def test_too_large_and_too_many(server):
    with server.client() as c:
        _error(c.post("/embed", json={"inputs": ["a"] * 5}), 413, "validation", "--max-client-batch-size 4")
        _error(c.post("/embed", json={"inputs": "x" * 25000}), 413, "validation", "payload limit")
        _error(c.post("/embed", json={"inputs": "word " * 1000}), 413, "validation", "characters")

        def chunks():  # no content-length: the limit is counted while the body streams in
            for _ in range(50):
                yield b'{"inputs": "' + b"y" * 1000
            yield b'"}'

        _error(c.post("/embed", content=chunks()), 413, "validation", "payload limit")
        _error(c.post("/v1/embeddings", json={"input": [[0, 5, 99999, 2]]}), 422, "validation", "vocabulary")
        _error(c.post("/v1/embeddings", json={"input": "a", "dimensions": 3}), 422, "validation", "dimensions")
        _error(c.get("/nowhere"), 404)
        _error(c.get("/embed"), 405)
        assert c.post("/embed", json={"inputs": "still fine"}).status_code == 200


def test_max_input_tokens_and_auto_truncate(server, mlm):
    text = texts(1, start=3)[0] * 3  # > 16 tokens, < 32 * 16 characters
    model = xlmrxl.XLMRobertaXLModel.from_pretrained(str(mlm), add_pooling_layer=False).eval()
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(mlm)
    ids = tok(text, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    want = torch.nn.functional.normalize(model(input_ids=ids).last_hidden_state[:, 0], dim=-1).detach().numpy()
    with server.client() as c:
        assert c.get("/info").json()["max_input_length"] == 16
        r = c.post("/embed", json={"inputs": text})  # --auto-truncate: cut to 16 tokens
        assert r.status_code == 200 and np.abs(np.array(r.json()) - want).max() <= 1e-6
        _error(c.post("/embed", json={"inputs": text, "truncate": False}), 413, "validation", "more than the limit 16")


def test_full_queue_answers_429_at_once(slow_server):
    def send(i):
        with slow_server.client() as c:
            t0 = time.perf_counter()
            r = c.post("/embed", json={"inputs": texts(2, start=i)})
            return r, time.perf_counter() - t0

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(send, range(10)))
    codes = [r.status_code for r, _ in results]
    assert codes.count(200) >= 3 and codes.count(429) >= 1, codes
    fastest_answer = min(seconds for r, seconds in results if r.status_code == 200)  # >= 2 batches of 0.3 s
    for r, seconds in results:
        if r.status_code == 429:
            _error(r, 429, "overloaded", "max-concurrent-requests")
            assert seconds < fastest_answer  # refused at once, not after waiting for a place
    with slow_server.client() as c:
        assert c.post("/embed", json={"inputs": "after the burst"}).status_code == 200


def test_health_says_503_until_warmed_up(slow_server):
    statuses = [status for status, _ in slow_server.startup]
    assert statuses[-1] == 200 and 503 in statuses, statuses  # warm-up lasts 3 s here
    body = next(b for s, b in slow_server.startup if s == 503)
    assert body["error_type"] == "unhealthy" and "warming up" in body["error"]


def test_request_timeout_answers_504(mlm, tmp_path):
    args = ("--task", "embed", "--request-timeout", "0.5")
    s = Server(mlm, *args, env={"XLMRXL_SERVE_TEST_DELAY": "1.0"}, log=tmp_path / "timeout.log")
    try:
        with s.client() as c:
            t0 = time.perf_counter()
            r = c.post("/embed", json={"inputs": "too slow"})
            assert time.perf_counter() - t0 < 0.95
            _error(r, 504, "timeout", "--request-timeout 0.5")
    finally:
        s.stop()


def test_client_disconnect_drops_unstarted_rows(slow_server, mlm):
    with slow_server.client() as c:
        before = metric(c.get("/metrics").text, "xlmrxl_rows_dropped_total")
    with pytest.raises(httpx.ReadTimeout):  # 6 rows, one per 0.3 s batch: the client leaves after about two
        with slow_server.client(timeout=0.6) as c:
            c.post("/embed", json={"inputs": texts(6)})
    time.sleep(1.5)
    with slow_server.client() as c:
        after = metric(c.get("/metrics").text, "xlmrxl_rows_dropped_total")
        r = c.post("/embed", json={"inputs": texts(2, start=9), "normalize": False})
        assert metric(c.get("/metrics").text, "xlmrxl_active_requests") == 0
    assert after - before >= 1
    pipe = xlmrxl.pipeline("feature-extraction", model=mlm, pooling="cls")
    assert np.abs(np.array(r.json()) - pipe(texts(2, start=9)).numpy()).max() <= 1e-6


def test_sigterm_under_load_answers_every_accepted_request(mlm, tmp_path):
    inputs = texts(12, start=20)
    pipe = xlmrxl.pipeline("feature-extraction", model=mlm, pooling="cls", normalize=True)
    want = pipe(inputs).numpy()
    s = Server(mlm, "--task", "embed", env={"XLMRXL_SERVE_TEST_DELAY": "0.5"}, log=tmp_path / "term.log")
    results: dict[int, object] = {}

    def send(i):
        try:
            with s.client() as c:
                results[i] = c.post("/embed", json={"inputs": [inputs[i]]})
        except httpx.HTTPError as exc:
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    with s.client() as c:  # SIGTERM once every request is accepted (queued or running)
        while len(results) + metric(c.get("/metrics").text, "xlmrxl_active_requests") < 12:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    rc = s.terminate()
    for t in threads:
        t.join()
    s.stop()
    assert rc == 0, s.read_log()
    for i in range(12):
        r = results[i]
        assert isinstance(r, httpx.Response) and r.status_code == 200, (i, r)
        assert np.abs(np.array(r.json()[0]) - want[i]).max() <= 1e-6
    with pytest.raises(httpx.ConnectError):  # no longer accepting
        httpx.get(s.url + "/health", timeout=2)
