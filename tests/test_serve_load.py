"""A bounded load on ``xlmrxl serve`` over the loopback address: 2,000 requests of random lengths (1 to 4 inputs each,
some through OpenAI's route) from 64 concurrent clients. Every answer must equal the offline embedding of exactly
its own inputs, in order (nothing lost, duplicated or crossed); p50 / p99 latency and throughput are printed."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import numpy as np
import pytest
from _serve import Server, make_checkpoint, metric

import xlmrxl
from xlmrxl.tokenizer import CORPUS_PATH

REQUESTS, CLIENTS = 2000, 64
_ONE_REQUEST_BUCKET = 'xlmrxl_batch_requests_bucket{le="1.0"}'


@pytest.fixture(scope="module")
def mlm(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("load_mlm"), spm_dir, max_position_embeddings=130)


def _pool(n: int, tok) -> list[str]:
    """``n`` distinct texts of 3 to 128 tokens."""
    words = CORPUS_PATH.read_text(encoding="utf-8").split()
    rng = random.Random(0)
    out = set()
    while len(out) < n:
        start = rng.randrange(len(words) - 200)
        text = " ".join(words[start : start + rng.choice([1, 2, 4, 8, 16, 32, 60])])
        if len(tok(text)["input_ids"]) <= 128:
            out.add(text)
    return sorted(out)


def test_load_2000_requests_64_clients(mlm, tmp_path, capsys):
    pool = _pool(300, xlmrxl.XLMRobertaTokenizer.from_pretrained(mlm))
    pipe = xlmrxl.pipeline("feature-extraction", model=mlm, pooling="cls", normalize=True)
    want = dict(zip(pool, pipe(pool, batch_size=32).numpy()))
    rng = random.Random(1)
    plan = [rng.sample(pool, rng.randint(1, 4)) for _ in range(REQUESTS)]
    args = ("--task", "embed", "--max-batch-tokens", "2048", "--device", "cpu,cpu")  # two model workers
    server = Server(mlm, *args, log=tmp_path / "load.log")
    latencies: list[float] = []
    errors: list[str] = []

    async def client(queue: asyncio.Queue, http: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            inputs = plan[i]
            t0 = time.perf_counter()
            if i % 4 == 0:
                r = await http.post("/v1/embeddings", json={"input": inputs, "model": f"req-{i}"})
                latencies.append(time.perf_counter() - t0)
                body = r.json()
                got = [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]
                if body.get("model") != f"req-{i}":
                    errors.append(f"request {i}: answered as {body.get('model')}")
            else:
                r = await http.post("/embed", json={"inputs": inputs})
                latencies.append(time.perf_counter() - t0)
                got = r.json()
            if r.status_code != 200 or len(got) != len(inputs):
                errors.append(f"request {i}: {r.status_code} {r.text[:200]}")
                continue
            err = max(float(np.abs(np.asarray(g) - want[t]).max()) for g, t in zip(got, inputs))
            if err > 1e-6:
                errors.append(f"request {i}: max error {err:.2e} (crossed or wrong answer)")

    async def main() -> float:
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            t0 = time.perf_counter()
            await asyncio.gather(*(client(queue, http) for _ in range(CLIENTS)))
            return time.perf_counter() - t0

    try:
        seconds = asyncio.run(main())
        with server.client() as c:
            metrics = c.get("/metrics").text
            info = c.get("/info").json()
    finally:
        server.stop()
    assert not errors, errors[:5]
    assert len(latencies) == REQUESTS
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    batches = metric(metrics, "xlmrxl_batch_requests_count")
    per_batch = metric(metrics, "xlmrxl_batch_requests_sum") / max(batches, 1)
    with capsys.disabled():
        print(
            f"\nserve load: {REQUESTS} requests, {CLIENTS} clients: {REQUESTS / seconds:.0f} req/s, "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {batches:.0f} model batches ({per_batch:.1f} requests each)"
        )
    single = next(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(_ONE_REQUEST_BUCKET))
    assert single < batches  # some model batches held rows of several clients' requests
    assert info["model_device"] == ["cpu", "cpu"]
