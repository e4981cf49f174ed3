"""``xlmrxl serve MODEL_DIR [--task ...] [--host 127.0.0.1] [--port 8080] ...``: ``create_app`` under uvicorn.

    xlmrxl serve /models/xlmr-xl-embed --pooling mean --max-batch-tokens 16384
    XLMRXL_API_KEY=secret xlmrxl serve /models/xcomet-xl --host 0.0.0.0 --port 9000

Binds 127.0.0.1 unless ``--host`` says otherwise (a warning when another address is bound without an API key).
SIGTERM / Ctrl-C: stop accepting connections, finish the requests in flight, exit 0. A model that fails to load
ends the server with exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

logger = logging.getLogger("xlmrxl")

TASK_NAMES = ("embed", "classify", "rerank", "fill-mask", "comet")


def _server_class() -> type:
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, minus re-raising the signal after the graceful shutdown: SIGTERM exits 0."""

        @contextlib.contextmanager
        def capture_signals(self):  # noqa: ANN201  (uvicorn's own signature)
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``xlmrxl`` parser's subparsers."""
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (text-embeddings-inference and OpenAI compatible), batched padding-free",
        description="An HTTP server for embeddings, classification, reranking, fill-mask and COMET scores.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="checkpoint directory (or a COMET model directory)")
    p.add_argument("--task", default=None, choices=TASK_NAMES, help="default: inferred from the checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="real tokens per model batch (16384)")
    p.add_argument("--max-concurrent-requests", type=int, default=512, help="queued + running requests (512)")
    p.add_argument("--max-client-batch-size", type=int, default=32, help="inputs per request (32)")
    p.add_argument("--max-input-tokens", type=int, default=None, help="tokens per input (default: the model's)")
    p.add_argument("--auto-truncate", action="store_true", help="cut long inputs unless a request says truncate")
    p.add_argument("--pooling", default=None, choices=("cls", "mean"), help="embed: default cls (or the ST config)")
    p.add_argument(
        "--normalize",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="embed: L2-normalise by default (requests may still say normalize=false); default on",
    )
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default float32)")
    p.add_argument("--device", default=None, help="cpu, cuda, or a comma-separated list: one model worker each")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"))
    p.add_argument("--quantization", default=None, choices=("int4",), help="quantize the linear layers on load")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (default: $XLMRXL_API_KEY)")
    p.add_argument("--payload-limit", type=int, default=2_000_000, help="request body bytes (2000000)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request (60)")
    p.add_argument("--model-name", default=None, help="name in /info and OpenAI answers (default: the dir name)")
    return p


def main(args: argparse.Namespace) -> int:
    """Handler of ``xlmrxl serve``: run uvicorn until SIGTERM / Ctrl-C."""
    import uvicorn

    from .app import create_app

    api_key = args.api_key or os.environ.get("XLMRXL_API_KEY") or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("xlmrxl serve: binding %s without an API key: anyone who can reach it can use it", args.host)
    failed: list[BaseException] = []
    server: Any = None

    def on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(
        args.model_dir,
        task=args.task,
        max_batch_tokens=args.max_batch_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_client_batch_size=args.max_client_batch_size,
        max_input_tokens=args.max_input_tokens,
        auto_truncate=args.auto_truncate,
        pooling=args.pooling,
        normalize=args.normalize,
        dtype=args.dtype,
        device=args.device,
        backend=args.backend,
        quantization=args.quantization,
        api_key=api_key,
        payload_limit=args.payload_limit,
        request_timeout=args.request_timeout,
        model_name=args.model_name,
        on_load_error=on_load_error,
    )
    level = "info" if args.verbose else "warning"
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=level, access_log=bool(args.verbose), timeout_keep_alive=30
    )
    server = _server_class()(config)
    server.run()
    if failed:
        sys.stderr.write(f"xlmrxl serve: error: the model did not load: {failed[0]}\n")
        return 1
    return 0
