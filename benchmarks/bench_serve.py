"""Serving benchmark (issue 21): ``xlmrxl serve`` against the servers a user would otherwise write, at 1, 16 and 64
concurrent clients in the same run.

Peers (each a server in its own process on a loopback port, started, measured, stopped in turn):
- ``xlmrxl serve``: ``xlmrxl serve MODEL --task embed --pooling mean`` (token-budget batches across clients,
  padding-free forward);
- ``fastapi+transformers``: FastAPI + ``transformers.XLMRobertaXLModel``, one padded batch per request (a sync
  route: FastAPI's thread pool runs requests side by side), mean pooling, normalised: what one writes first;
- ``fastapi+sentence-transformers``: the same server calling ``SentenceTransformer.encode`` per request (skipped,
  with the reason, when sentence-transformers is not installed).
Requests: 1-4 texts each of a realistic length mixture (5-120 words, the shipped multilingual corpus), the same
request list for every peer. Rows: per peer and concurrency, requests/s, texts/s, p50 / p99 latency (ms), and the
max |difference| of the embeddings against xlmrxl serve's on the same requests.

Model: random weights. ``--tiny``: hidden 64, 2 layers, fp32 on CPU (a smoke run: < 60 s); default: the XL shape
(2560 x 36) in bf16 on a GPU (hidden 1024, 8 layers fp32 without one). ``--quick``: fewer requests. Written with
``benchmarks.harness.write_results`` as ``serve.{json,md}`` (``serve_tiny`` with ``--tiny``) under
``benchmarks/results/<device>/`` or ``--out``.

    python -m benchmarks.bench_serve [--tiny] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import harness
    from benchmarks.bench_corpus import CPU, TINY, XL, fit, make_model, make_texts
else:
    from . import harness
    from .bench_corpus import CPU, TINY, XL, fit, make_model, make_texts

import xlmrxl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 16, 64)

try:  # the baseline servers' request body (module level: FastAPI resolves the annotation by name)
    from pydantic import BaseModel

    class Req(BaseModel):
        inputs: str | list[str]

except ImportError:  # pragma: no cover - pydantic comes with fastapi ([serve] extra)
    Req = None  # type: ignore[assignment,misc]


def baseline_app(kind: str, model_dir: str, device: str, dtype: str):
    """The server a user writes: one request -> one padded batch (``transformers``) or one ``encode`` call (``st``)."""
    from fastapi import FastAPI

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    app = FastAPI()
    if kind == "st":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model_dir, device=device, model_kwargs={"torch_dtype": torch_dtype})

        def encode(texts: list[str]) -> list:
            return st.encode(texts, normalize_embeddings=True, convert_to_numpy=True).tolist()

    else:
        import transformers

        try:
            tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        except Exception:  # no fast-tokenizer conversion here: the sentencepiece one
            tok = transformers.XLMRobertaTokenizer.from_pretrained(model_dir)
        model = transformers.XLMRobertaXLModel.from_pretrained(model_dir, dtype=torch_dtype, add_pooling_layer=False)
        model = model.to(device).eval()

        @torch.inference_mode()
        def encode(texts: list[str]) -> list:
            enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1).cpu().tolist()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/embed")
    def embed(req: Req) -> list:
        return encode([req.inputs] if isinstance(req.inputs, str) else req.inputs)

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], port: int, log: Path, timeout: float = 900) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready in {timeout} s: {log.read_text(errors='replace')[-1500:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _load(url: str, plan: list[list[str]], clients: int) -> tuple[float, list[float], list]:
    """Send ``plan`` with ``clients`` concurrent clients: wall seconds, latencies, answers (in plan order)."""
    import httpx

    latencies: list[float] = [0.0] * len(plan)
    answers: list = [None] * len(plan)
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(len(plan)):
        queue.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            r = await http.post("/embed", json={"inputs": plan[i]})
            latencies[i] = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"request {i} answered {r.status_code}: {r.text[:300]}")
            answers[i] = r.json()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await http.post("/embed", json={"inputs": plan[0]})  # connection + first-call costs out of the timing
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - t0, latencies, answers


def _max_diff(a: list, b: list) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, fp32 on CPU (a smoke run)")
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--layers", type=int, default=None, help="encoder layers (default: the model's; the lease: 6)")
    ap.add_argument("--requests", type=int, default=None, help="requests per concurrency level at 64 clients")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/<device>)")
    ap.add_argument("--serve-baseline", default=None, choices=("transformers", "st"), help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_baseline:  # a baseline server process (started by the benchmark itself)
        import uvicorn

        if args.device == "cpu":
            torch.set_num_threads(1)
        app = baseline_app(args.serve_baseline, args.model, args.device, args.dtype)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return 0

    cuda = torch.cuda.is_available() and not args.tiny
    config = TINY if args.tiny else (XL if cuda else CPU)
    if args.layers is not None:  # XL's widths at fewer layers: builds, saves and loads in seconds (the lease)
        config = dict(config, num_hidden_layers=args.layers)
    dtype = torch.bfloat16 if cuda else torch.float32
    dname, device = ("bfloat16", "cuda") if cuda else ("float32", "cpu")
    n64 = args.requests or (80 if args.tiny and args.quick else 400 if args.tiny or args.quick else 2000)
    counts = {1: max(10, n64 // 8), 16: max(20, n64 // 2), 64: n64}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="xlmrxl-bench-serve-") as tmp:
        tmp = Path(tmp)
        model_dir = make_model(tmp / "model", config, dtype)
        tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(model_dir)
        rng = random.Random(0)
        pool = [fit(t, tok, 500) for t in make_texts(400)]
        plans = {c: [rng.sample(pool, rng.randint(1, 4)) for _ in range(n)] for c, n in counts.items()}
        peers = [
            ("xlmrxl serve", [sys.executable, "-m", "xlmrxl", "serve", str(model_dir), "--task", "embed"]),
            (
                "fastapi+transformers",
                [sys.executable, "-m", "benchmarks.bench_serve", "--serve-baseline", "transformers"],
            ),
            (
                "fastapi+sentence-transformers",
                [sys.executable, "-m", "benchmarks.bench_serve", "--serve-baseline", "st"],
            ),
        ]
        reference: dict[int, list] = {}
        for name, cmd in peers:
            if name.endswith("sentence-transformers"):
                try:
                    import sentence_transformers  # noqa: F401
                except ImportError as exc:
                    rows.append({"peer": name, "note": f"skipped: sentence-transformers is not installed ({exc})"})
                    continue
            port = _free_port()
            if name == "xlmrxl serve":
                cmd = cmd + ["--pooling", "mean", "--normalize", "--dtype", dname, "--device", device]
                cmd += ["--request-timeout", "600", "--max-concurrent-requests", "4096"]
            else:
                cmd = cmd + ["--model", str(model_dir), "--device", device, "--dtype", dname]
            env_threads = ["env", "OMP_NUM_THREADS=1"] if device == "cpu" else []
            try:
                proc = _start(env_threads + cmd + ["--port", str(port)], port, tmp / f"{name.replace(' ', '_')}.log")
            except Exception as exc:  # a peer that cannot start is reported, not fatal
                rows.append({"peer": name, "note": f"skipped: {type(exc).__name__}: {str(exc)[-300:]}"})
                continue
            try:
                for clients in CONCURRENCY:
                    plan = plans[clients]
                    try:
                        seconds, lat, answers = asyncio.run(_load(f"http://127.0.0.1:{port}", plan, clients))
                    except Exception as exc:  # reported in the results, the other peers still run
                        rows.append({"peer": name, "clients": clients, "note": f"failed: {exc}"[:300]})
                        break
                    if name == "xlmrxl serve":
                        reference[clients] = answers
                    ref = reference.get(clients)
                    diff = _max_diff([v for a in answers for v in a], [v for a in ref for v in a]) if ref else None
                    p50, p99 = np.percentile(lat, [50, 99]) * 1000
                    n_texts = sum(len(p) for p in plan)
                    rows.append(
                        {
                            "peer": name,
                            "clients": clients,
                            "requests": len(plan),
                            "req_per_s": len(plan) / seconds,
                            "texts_per_s": n_texts / seconds,
                            "p50_ms": p50,
                            "p99_ms": p99,
                            "max_diff_vs_xlmrxl": diff,
                        }
                    )
                    print(
                        f"  {name:<30} {clients:3d} clients: {rows[-1]['req_per_s']:8.1f} req/s "
                        f"p50 {p50:8.1f} ms p99 {p99:8.1f} ms",
                        flush=True,
                    )
            finally:
                _stop(proc)
    base = {r["clients"]: r["req_per_s"] for r in rows if r["peer"] == "fastapi+transformers" and "req_per_s" in r}
    for r in rows:
        if r.get("clients") in base and "req_per_s" in r:
            r["speedup_vs_transformers"] = r["req_per_s"] / base[r["clients"]]
    out = harness.write_results(
        "serve_tiny" if args.tiny else "serve",
        rows,
        columns=[
            "peer",
            "clients",
            "requests",
            "req_per_s",
            "texts_per_s",
            "p50_ms",
            "p99_ms",
            "speedup_vs_transformers",
            "max_diff_vs_xlmrxl",
            "note",
        ],
        extra={"config": config, "dtype": dname, "device": device, "requests": counts},
        out_dir=args.out,
    )
    print(f"bench_serve: results in {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
