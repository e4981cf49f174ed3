"""``create_app(model_dir, ...)``: the ASGI app of ``xlmrxl serve`` (FastAPI), for uvicorn, Ray Serve or your server.

The model loads and warms up on a background thread once the app starts (``GET /health`` answers 503 until then,
200 after), then one ``Engine`` worker per device batches every request's rows (``engine.py``). Routes are in
``routes.py``. Errors have text-embeddings-inference's JSON body ``{"error": ..., "error_type": ...}``:

- 413 ``validation``: body over ``payload_limit`` bytes (refused before it is read to the end), more than
  ``max_client_batch_size`` inputs, an input over ``max_input_chars`` characters (both before tokenizing) or over
  ``max_input_tokens`` tokens without ``truncate``;
- 422 ``validation``: malformed JSON, wrong types, empty or whitespace-only inputs, a route the task does not serve;
- 429 ``overloaded``: ``max_concurrent_requests`` already queued or running; 424 ``backend``: the model failed;
- 504 ``timeout``: not answered within ``request_timeout`` seconds; 503 ``unhealthy``: not ready yet;
- 401 ``unauthorized``: ``api_key`` set and the ``Authorization: Bearer`` header does not match (constant-time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import routes
from .engine import Engine, Overloaded
from .runners import TASKS, InputError, infer_task, sentence_transformers_defaults
from .state import ServeError, ServeState, error_response

logger = logging.getLogger("xlmrxl")


class _Guard:
    """ASGI middleware: API key, body size limit (before the body is read to the end), request metrics."""

    def __init__(self, app: Any, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st, path, t0 = self.state, scope.get("path", ""), time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_status)
                return
            if scope.get("method") == "POST":  # bodies are JSON whatever the client's content-type (curl -d)
                headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
                scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
            seen = {"bytes": 0}

            async def limited() -> dict:
                message = await receive()
                if message["type"] == "http.request":
                    seen["bytes"] += len(message.get("body", b""))
                    if seen["bytes"] > st.payload_limit:  # FastAPI passes its HTTPException through body reading
                        raise HTTPException(413, self._too_big())
                return message

            await self.app(scope, limited, send_status)
        finally:
            if path in st.routes:
                st.metrics.on_request(path, status["code"], time.perf_counter() - t0)

    def _too_big(self) -> str:
        return f"the request body is larger than the payload limit ({self.state.payload_limit} bytes)"

    def _refusal(self, scope: dict) -> JSONResponse | None:
        st = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if st.api_key is not None and scope.get("path") != "/health":
            given = headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), st.api_key.encode()):
                return error_response(401, "unauthorized", "missing or wrong API key: send Authorization: Bearer KEY")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > st.payload_limit:
            return error_response(413, "validation", self._too_big())
        return None


def create_app(
    model_dir: str,
    *,
    task: str | None = None,
    max_batch_tokens: int = 16384,
    max_concurrent_requests: int = 512,
    max_client_batch_size: int = 32,
    max_input_tokens: int | None = None,
    max_input_chars: int | None = None,
    auto_truncate: bool = False,
    pooling: str | None = None,
    normalize: bool | None = None,
    dtype: str | None = None,
    device: str | list[str] | None = None,
    backend: str = "auto",
    quantization: str | None = None,
    api_key: str | None = None,
    payload_limit: int = 2_000_000,
    request_timeout: float = 60.0,
    model_name: str | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app serving ``model_dir``; see the module docstring. ``device``: one device, a comma-separated list
    or a list (one model worker each). ``task=None``: inferred from the checkpoint (``runners.infer_task``);
    ``pooling`` / ``normalize`` None: a sentence-transformers directory's own, else ``cls`` / True per request."""

    path = Path(model_dir)
    if not path.exists():
        raise FileNotFoundError(f"model directory {str(model_dir)!r} does not exist")
    task = task or infer_task(path)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not served; use one of {', '.join(TASKS)}")
    st_defaults = sentence_transformers_defaults(path)
    pooling = pooling or st_defaults.get("pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling={pooling!r} is not supported; use 'cls' or 'mean'")
    if quantization not in (None, "int4"):
        raise ValueError(f"quantization={quantization!r} is not supported; use 'int4' or leave it out")
    for name, value in (("max_client_batch_size", max_client_batch_size), ("payload_limit", payload_limit)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if request_timeout <= 0:
        raise ValueError(f"request_timeout={request_timeout} must be > 0 seconds")
    devices = device.split(",") if isinstance(device, str) else list(device or [None])
    state = ServeState(
        model_dir=str(path),
        model_name=model_name or path.name,
        task=task,
        devices=devices,
        dtype=dtype,
        backend=backend,
        quantization=quantization,
        pooling=pooling,
        normalize=normalize if normalize is not None else st_defaults.get("normalize"),
        max_batch_tokens=max_batch_tokens,
        max_concurrent_requests=max_concurrent_requests,
        max_client_batch_size=max_client_batch_size,
        max_input_tokens=max_input_tokens,
        max_input_chars=max_input_chars,
        auto_truncate=auto_truncate,
        api_key=api_key or None,
        payload_limit=payload_limit,
        request_timeout=request_timeout,
    )
    Engine([], max_batch_tokens, max_concurrent_requests)  # checks the limits now, before anything loads

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()

        def load() -> None:
            try:
                state.load()
            except BaseException as exc:
                state.load_error = f"{type(exc).__name__}: {exc}"
                logger.error("xlmrxl serve: loading %s failed: %s", state.model_dir, state.load_error)
                if on_load_error is not None:
                    loop.call_soon_threadsafe(on_load_error, exc)
                return
            loop.call_soon_threadsafe(started)

        def started() -> None:
            state.engine = Engine(
                state.runners,
                max_batch_tokens,
                max_concurrent_requests,
                on_batch=state.metrics.on_batch,
                on_drop=state.metrics.on_drop,
            )
            state.engine.start()
            state.ready = True
            logger.warning("xlmrxl serve: %s ready (%s on %s)", state.model_name, task, ", ".join(map(str, devices)))

        threading.Thread(target=load, name="xlmrxl-load", daemon=True).start()
        yield
        if state.engine is not None:
            await state.engine.stop()

    app = FastAPI(title="xlmrxl serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.xlmrxl = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return error_response(422, "validation", "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "validation" if exc.status_code < 500 else "backend", str(exc.detail))

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc.status, exc.error_type, str(exc))

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(exc.status, exc.error_type, str(exc))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return error_response(429, "overloaded", str(exc))

    routes.add_routes(app, state)
    state.routes = {r.path for r in app.routes if hasattr(r, "methods")}
    app.add_middleware(_Guard, state=state)
    return app
