"""The package's logger (``xlmrxl_kernels``) and the one ``log_once`` (the model package binds it to its own)."""

from __future__ import annotations

import logging

logger = logging.getLogger("xlmrxl_kernels")

_LOGGED: set = set()


def log_once(message: str, level: int = logging.INFO, log: logging.Logger | None = None) -> None:
    """Log ``message`` once per process on ``log`` (default: the ``xlmrxl_kernels`` logger): fallback and choice
    messages would otherwise repeat every layer and call."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        (log or logger).log(level, message)


def forget() -> None:
    """Log every message again (tests)."""
    _LOGGED.clear()
