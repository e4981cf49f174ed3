"""Routes of ``xlmrxl serve``: text-embeddings-inference's, OpenAI's ``/v1/embeddings``, ``/fill-mask`` and ``/comet``.

Answers are ``JSONResponse`` objects (``json.dumps``; no response-model validation of thousands of floats). Every
compute route checks its inputs (count and characters before tokenizing), tokenizes (a large request on a thread), hands
the rows to the engine and waits for them with the request's timeout, dropping its unstarted rows when the client
disconnects. Response shapes:

- ``POST /embed`` -> ``[[float, ...], ...]`` (one per input, also for one string);
- ``POST /predict`` -> ``[{"score", "label"}, ...]`` best first (a list of those for a list of inputs);
- ``POST /rerank`` -> ``[{"index", "score", "text"?}, ...]`` best first;
- ``POST /tokenize`` -> ``[[{"id", "text", "special"}, ...], ...]``;
- ``POST /v1/embeddings`` -> OpenAI's ``{"object": "list", "data": [{"object": "embedding", "embedding",
  "index"}], "model", "usage": {"prompt_tokens", "total_tokens"}}`` (``base64``: little-endian float32 bytes);
- ``POST /fill-mask`` -> per input, one list per ``<mask>`` of ``{"token", "token_str", "score"}``;
- ``POST /comet`` -> ``{"scores", "system_score", "error_spans"?}`` (system score = mean, as COMET's);
- ``GET /health``, ``GET /info``, ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .runners import InputError, Row
from .schemas import (
    CometRequest,
    EmbedRequest,
    FillMaskRequest,
    OpenAIEmbeddingsRequest,
    PredictRequest,
    RerankRequest,
    TokenizeRequest,
)
from .state import ServeError, ServeState

_TASK_ROUTES = {
    "embed": ("embed",),
    "v1/embeddings": ("embed",),
    "predict": ("classify", "rerank"),
    "rerank": ("rerank", "classify"),
    "fill-mask": ("fill-mask",),
    "comet": ("comet",),
    "tokenize": ("embed", "classify", "rerank", "fill-mask"),
}


def _ready(state: ServeState, route: str) -> None:
    if not state.ready:
        why = f"loading failed: {state.load_error}" if state.load_error else "the model is loading or warming up"
        raise ServeError(503, "unhealthy", f"not ready: {why}; poll GET /health")
    if state.task not in _TASK_ROUTES[route]:
        raise ServeError(
            422,
            "validation",
            f"/{route} needs a model served with --task {' or '.join(_TASK_ROUTES[route])}; this server runs "
            f"--task {state.task}",
        )


def _texts(state: ServeState, inputs: Any, name: str = "inputs") -> tuple[list, bool]:
    """The inputs as a list (and whether one was sent alone), checked before any tokenizing."""
    single = isinstance(inputs, str)
    items = [inputs] if single else list(inputs)
    if not items:
        raise InputError(f"`{name}` is an empty list; send at least one input", error_type="empty")
    if len(items) > state.max_client_batch_size:
        raise InputError(
            f"`{name}` holds {len(items)} inputs, more than --max-client-batch-size {state.max_client_batch_size}; "
            "split the batch",
            status=413,
        )
    for i, t in enumerate(items):
        for s in t if isinstance(t, list) else [t]:
            if len(s) > state.max_input_chars:
                raise InputError(
                    f"{name}[{i}] has {len(s)} characters, more than the limit {state.max_input_chars}", status=413
                )
            if not s.strip():
                raise InputError(f"{name}[{i}] is empty or only whitespace; send text", error_type="empty")
    return items, single


def _truncate(state: ServeState, truncate: bool | None) -> bool:
    return state.auto_truncate if truncate is None else truncate


async def _compute(state: ServeState, request: Request, rows: list[Row]) -> list[Any]:
    """The rows' results from the engine, within the request timeout; the rows are dropped if the client leaves."""
    assert state.engine is not None
    job = state.engine.enqueue(rows)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.request_timeout
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                job.cancel()
                raise ServeError(504, "timeout", f"not answered within --request-timeout {state.request_timeout} s")
            done, _ = await asyncio.wait({job.future}, timeout=min(0.1, remaining))
            if done:
                break
            if await request.is_disconnected():
                job.cancel()
                raise ServeError(499, "client_closed", "the client disconnected")
    except asyncio.CancelledError:
        job.cancel()
        raise
    exc = job.future.exception()
    if exc is not None:
        raise ServeError(424, "backend", f"inference failed: {type(exc).__name__}: {exc}")
    return job.future.result()


async def _rows(state: ServeState, texts: list, truncate: bool, direction: str, pairs: list | None = None) -> list:
    """Tokenized rows: small requests on the event loop (cheaper than a thread hop), large ones on a thread."""
    chars = sum(len(t) for t in texts) + sum(len(t) for t in pairs or ())
    if chars <= 20_000:
        return state.runner.rows(texts, truncate, direction.lower(), pairs)
    return await run_in_threadpool(state.runner.rows, texts, truncate, direction.lower(), pairs)


def add_routes(app: FastAPI, state: ServeState) -> None:
    """Attach every route to ``app``."""

    @app.get("/health")
    async def health() -> JSONResponse:
        if not state.ready:
            why = f"loading failed: {state.load_error}" if state.load_error else "loading / warming up"
            return JSONResponse({"error": why, "error_type": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> dict:
        runner = state.runners[0] if state.runners else None
        return {
            "model_id": state.model_name,
            "model_dir": state.model_dir,
            "task": state.task,
            "model_dtype": str(runner.dtype).replace("torch.", "") if runner else state.dtype,
            "model_device": [str(r.device) for r in state.runners] or state.devices,
            "pooling": state.pooling if state.task == "embed" else None,
            "normalize": state.normalize,
            "quantization": state.quantization,
            "max_batch_tokens": state.max_batch_tokens,
            "max_concurrent_requests": state.max_concurrent_requests,
            "max_client_batch_size": state.max_client_batch_size,
            "max_input_length": state.max_input_tokens,
            "max_input_chars": state.max_input_chars,
            "auto_truncate": state.auto_truncate,
            "payload_limit": state.payload_limit,
            "request_timeout": state.request_timeout,
            "ready": state.ready,
            "version": __version__,
            "pid": os.getpid(),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/embed")
    async def embed(body: EmbedRequest, request: Request) -> JSONResponse:
        _ready(state, "embed")
        texts, _ = _texts(state, body.inputs)
        rows = await _rows(state, texts, _truncate(state, body.truncate), body.truncation_direction)
        normalize = body.normalize if body.normalize is not None else state.normalize is not False
        for r in rows:
            r.options["normalize"] = normalize
        out = await _compute(state, request, rows)
        return JSONResponse([v.tolist() for v in out])

    @app.post("/v1/embeddings")
    async def openai_embeddings(body: OpenAIEmbeddingsRequest, request: Request) -> JSONResponse:
        _ready(state, "v1/embeddings")
        hidden = state.runner.model.config.hidden_size
        if body.dimensions is not None and body.dimensions != hidden:
            raise InputError(f"dimensions={body.dimensions}: this model's embeddings have {hidden}; leave it out")
        given = body.input
        if isinstance(given, list) and given and isinstance(given[0], int):
            given = [given]
        if isinstance(given, list) and given and isinstance(given[0], list):
            if not given or any(not x for x in given):
                raise InputError("`input` holds an empty token list", error_type="empty")
            if len(given) > state.max_client_batch_size:
                raise InputError(f"`input` holds {len(given)} inputs, more than {state.max_client_batch_size}", 413)
            rows = state.runner.id_rows(given, _truncate(state, None))
        else:
            texts, _ = _texts(state, given, "input")
            rows = await _rows(state, texts, _truncate(state, None), "right")
        for r in rows:
            r.options["normalize"] = state.normalize is not False
        out = await _compute(state, request, rows)
        data = []
        for i, v in enumerate(out):
            vec = v.astype("<f4")
            emb: Any = base64.b64encode(vec.tobytes()).decode() if body.encoding_format == "base64" else vec.tolist()
            data.append({"object": "embedding", "embedding": emb, "index": i})
        tokens = sum(r.tokens for r in rows)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": body.model or state.model_name, "usage": usage})

    def _scored(scores: list[float]) -> list[dict]:
        labels = state.runner.labels
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return [{"score": scores[i], "label": labels[i]} for i in order]

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request) -> JSONResponse:
        _ready(state, "predict")
        items, single = _texts(state, body.inputs)
        pairs = None
        if items and isinstance(items[0], list):
            if any(len(p) != 2 for p in items):
                raise InputError("`inputs` as a list of lists must hold pairs [text, text_pair]")
            items, pairs = [p[0] for p in items], [p[1] for p in items]
        rows = await _rows(state, items, _truncate(state, body.truncate), body.truncation_direction, pairs)
        for r in rows:
            r.options["raw_scores"] = body.raw_scores
        out = [_scored(s) for s in await _compute(state, request, rows)]
        return JSONResponse(out[0] if single else out)

    @app.post("/rerank")
    async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
        _ready(state, "rerank")
        texts, _ = _texts(state, body.texts, "texts")
        _texts(state, body.query, "query")
        queries = [body.query] * len(texts)
        rows = await _rows(state, queries, _truncate(state, body.truncate), body.truncation_direction, texts)
        for r in rows:
            r.options["raw_scores"] = body.raw_scores
        out = await _compute(state, request, rows)
        col = 1 if len(out[0]) == 2 else 0  # a two-label cross-encoder: the score of the "relevant" label
        ranked = []
        for i, s in sorted(enumerate(out), key=lambda x: -x[1][col]):
            entry: dict[str, Any] = {"index": i, "score": s[col]}
            if body.return_text:
                entry["text"] = texts[i]
            ranked.append(entry)
        return JSONResponse(ranked)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        _ready(state, "tokenize")
        texts, _ = _texts(state, body.inputs)
        tok = state.runner.tokenizer
        special = set(tok.all_special_ids)

        def run() -> list:
            enc = tok(texts, add_special_tokens=body.add_special_tokens, return_attention_mask=False)["input_ids"]
            return [
                [{"id": t, "text": tok.convert_ids_to_tokens(t), "special": t in special} for t in ids] for ids in enc
            ]

        return JSONResponse(await run_in_threadpool(run))

    @app.post("/fill-mask")
    async def fill_mask(body: FillMaskRequest, request: Request) -> JSONResponse:
        _ready(state, "fill-mask")
        texts, single = _texts(state, body.inputs)
        rows = await _rows(state, texts, _truncate(state, body.truncate), body.truncation_direction)
        mask = state.runner.tokenizer.mask_token_id
        for i, r in enumerate(rows):
            if mask not in r.item:
                raise InputError(f"inputs[{i}] holds no {state.runner.tokenizer.mask_token} token (after truncation)")
            r.options["top_k"] = body.top_k
        out = await _compute(state, request, rows)
        return JSONResponse(out[0] if single else out)

    @app.post("/comet")
    async def comet(body: CometRequest, request: Request) -> JSONResponse:
        _ready(state, "comet")
        _texts(state, body.src, "src")
        _texts(state, body.mt, "mt")
        if len(body.mt) != len(body.src) or (body.ref is not None and len(body.ref) != len(body.src)):
            raise InputError("`src`, `mt` (and `ref`) must hold the same number of segments")
        if body.ref is not None:
            _texts(state, body.ref, "ref")
        elif state.runner.comet.needs_ref:
            raise InputError(f"{type(state.runner.model).__name__} needs references: send `ref`")
        rows = []
        for i in range(len(body.src)):
            seg = {"src": body.src[i], "mt": body.mt[i]}
            if body.ref is not None:
                seg["ref"] = body.ref[i]
            rows.append(Row(seg, sum(len(v) for v in seg.values()) // 4 + 3))
        out = await _compute(state, request, rows)
        scores = [float(r["score"]) for r in out]
        result: dict[str, Any] = {"scores": scores, "system_score": float(np.mean(scores))}
        if state.runner.comet.xcomet:
            result["error_spans"] = [r["error_spans"] for r in out]
        return JSONResponse(result)
