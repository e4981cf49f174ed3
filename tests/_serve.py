"""Helpers of the ``xlmrxl serve`` tests: tiny checkpoints and a server started from the CLI as a subprocess on a
free loopback port (``Server``), waited for until ``GET /health`` says ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _tiny_checkpoint import make_checkpoint  # noqa: F401  (re-exported to the tests that import it here)

from xlmrxl.tokenizer import CORPUS_PATH

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")


LINES = [ln for ln in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if ln.strip()]


def texts(n: int, start: int = 0, mask: bool = False) -> list[str]:
    """``n`` corpus lines of varied lengths (20 to 109 characters), ``<mask>`` appended when asked."""
    out = []
    for i in range(start, start + n):
        t = LINES[i % len(LINES)][: 20 + (i * 37) % 90]
        out.append(t + " <mask>." if mask else t)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``xlmrxl serve MODEL --port P --device cpu ARGS...`` in a subprocess; ``url``, ``client()``, ``stop()``."""

    def __init__(self, model, *args: str, env: dict | None = None, log: Path | None = None, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        for name in ("TRITON_INTERPRET", "XLMRXL_POISON"):  # conftest sets them for kernel tests; a server runs plain
            full_env.pop(name, None)
        self.log_path = log
        self.log = open(log, "wb") if log else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "xlmrxl", "serve", str(model), "--port", str(self.port), "--device", "cpu"]
        self.proc = subprocess.Popen(cmd + list(args), cwd=ROOT, env=full_env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        self.startup: list[tuple[int, dict]] = []  # (status, body) of /health while starting
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.read_log()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2)
                self.startup.append((r.status_code, r.json()))
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server was not ready within {timeout} s: {self.read_log()}")
            time.sleep(0.2)

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), **kw)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples named exactly ``name`` (any labels)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
