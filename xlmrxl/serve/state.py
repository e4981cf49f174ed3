"""Shared state of ``xlmrxl serve``'s app: settings, the loaded runners and engine, metrics; the JSON error shape."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi.responses import JSONResponse

from .engine import Engine
from .metrics import Metrics
from .runners import Runner


class ServeError(Exception):
    """An error answered with ``status`` and ``{"error", "error_type"}``."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type = status, error_type


def error_response(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


class ServeState:
    """What the routes share: settings, the runners and the engine once loaded, the metrics."""

    def __init__(self, **settings: Any) -> None:
        self.__dict__.update(settings)
        self.runners: list[Runner] = []
        self.engine: Engine | None = None
        self.ready = False
        self.load_error: str | None = None
        self.routes: set[str] = set()
        self.metrics = Metrics(
            lambda: self.engine.queued_rows if self.engine else 0, lambda: self.engine.active if self.engine else 0
        )

    @property
    def runner(self) -> Runner:
        return self.runners[0]

    def load(self) -> None:
        """Load one runner per device and warm each up (runs on a background thread)."""
        runners = []
        for device in self.devices:
            r = Runner(
                self.model_dir,
                self.task,
                device=device,
                dtype=self.dtype,
                backend=self.backend,
                quantization=self.quantization,
                pooling=self.pooling,
                max_input_tokens=self.max_input_tokens,
            )
            r.warm_up(self.max_batch_tokens)
            runners.append(r)
        delay = float(os.environ.get("XLMRXL_SERVE_TEST_DELAY", "0") or 0)
        if delay:  # tests only: a warm-up long enough to see /health say 503
            time.sleep(10 * delay)
        self.runners = runners
        self.max_input_tokens = runners[0].max_input_tokens
        if self.max_input_chars is None:
            self.max_input_chars = 32 * self.max_input_tokens
