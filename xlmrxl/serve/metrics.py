"""Prometheus metrics of ``xlmrxl serve`` (prometheus-client), one registry per app so apps do not share counters.

Names: ``xlmrxl_queue_depth`` (rows waiting), ``xlmrxl_active_requests``, ``xlmrxl_batch_rows``,
``xlmrxl_batch_requests`` and ``xlmrxl_batch_tokens`` (histograms per model batch), ``xlmrxl_padding_avoided_tokens``
(the pad tokens one padded batch would have computed), ``xlmrxl_batch_seconds``, ``xlmrxl_request_seconds`` (by
route), ``xlmrxl_requests`` (by route and status), ``xlmrxl_rows_dropped`` (rows of clients that went away).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The app's metrics; ``render()`` is the /metrics body."""

    def __init__(self, queue_depth: Callable[[], float], active: Callable[[], float]) -> None:
        self.registry = r = CollectorRegistry()
        Gauge("xlmrxl_queue_depth", "rows waiting for a model batch", registry=r).set_function(queue_depth)
        Gauge("xlmrxl_active_requests", "requests queued or running", registry=r).set_function(active)
        self.batch_rows = Histogram("xlmrxl_batch_rows", "rows per model batch", buckets=_SIZES, registry=r)
        self.batch_requests = Histogram(
            "xlmrxl_batch_requests", "requests with rows in a model batch", buckets=_SIZES, registry=r
        )
        self.batch_tokens = Histogram("xlmrxl_batch_tokens", "real tokens per model batch", buckets=_TOKENS, registry=r)
        self.padding_avoided = Counter(
            "xlmrxl_padding_avoided_tokens", "pad tokens a padded batch would have computed", registry=r
        )
        self.batch_seconds = Histogram("xlmrxl_batch_seconds", "model time per batch", buckets=_SECONDS, registry=r)
        self.request_seconds = Histogram(
            "xlmrxl_request_seconds", "request latency", ["route"], buckets=_SECONDS, registry=r
        )
        self.requests = Counter("xlmrxl_requests", "requests answered", ["route", "status"], registry=r)
        self.rows_dropped = Counter("xlmrxl_rows_dropped", "unstarted rows of clients that went away", registry=r)

    def on_batch(self, rows: int, requests: int, tokens: int, padded: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.batch_tokens.observe(tokens)
        self.padding_avoided.inc(padded - tokens)
        self.batch_seconds.observe(seconds)

    def on_drop(self, rows: int) -> None:
        self.rows_dropped.inc(rows)

    def on_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
