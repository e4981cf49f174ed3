"""``xlmrxl.logging``: what the library says reaches stderr, as with ``transformers.logging``.

    import xlmrxl
    xlmrxl.logging.set_verbosity_info()          # or set_verbosity("info"), set_verbosity(logging.INFO)
    xlmrxl.logging.get_verbosity()               # 20

- Every message of ``xlmrxl`` and of its kernels (``xlmrxl_kernels``, which never imports ``xlmrxl``) goes to one
  logger, ``"xlmrxl"``. Importing ``xlmrxl`` gives it a handler writing to the current ``sys.stderr`` and the level
  WARNING, so load warnings (missing or newly initialised weights, a masked-LM checkpoint loaded into a classifier)
  are seen without any set-up, as transformers' are.
- ``XLMRXL_VERBOSITY`` (``debug``, ``info``, ``warning``, ``error``, ``critical``) sets the level at import, as
  ``TRANSFORMERS_VERBOSITY`` does; ``set_verbosity`` changes it later. A level the application gave the ``"xlmrxl"``
  logger before importing ``xlmrxl`` is kept (unless ``XLMRXL_VERBOSITY`` is set).
- Records also propagate to the root logger (``caplog`` and the application's handlers see them). When the root
  logger already writes to the console (``logging.basicConfig()``), the default handler stays silent so a message
  is never printed twice; ``disable_default_handler()`` removes it altogether.
"""

from __future__ import annotations

import logging as _logging
import os
import sys

from . import env

CRITICAL = _logging.CRITICAL
FATAL = _logging.FATAL
ERROR = _logging.ERROR
WARNING = _logging.WARNING
WARN = _logging.WARN
INFO = _logging.INFO
DEBUG = _logging.DEBUG
NOTSET = _logging.NOTSET

ROOT = "xlmrxl"  # the library's logger
KERNELS = "xlmrxl_kernels"  # the kernels' own logger (that package never imports xlmrxl): configured alongside
NAMES = (ROOT, KERNELS)
ENV = "XLMRXL_VERBOSITY"
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}
DEFAULT_LEVEL = WARNING

__all__ = [
    "CRITICAL",
    "DEBUG",
    "ERROR",
    "FATAL",
    "INFO",
    "NOTSET",
    "WARN",
    "WARNING",
    "disable_default_handler",
    "enable_default_handler",
    "get_logger",
    "get_verbosity",
    "set_verbosity",
    "set_verbosity_debug",
    "set_verbosity_error",
    "set_verbosity_info",
    "set_verbosity_warning",
]


class _StderrHandler(_logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (pytest's capsys, a redirected stderr)."""

    def __init__(self) -> None:
        _logging.Handler.__init__(self)
        self.setFormatter(_logging.Formatter("%(message)s"))
        self.addFilter(_not_printed_by_root)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream: the stream is always the current sys.stderr
        pass


def _console(stream) -> bool:
    return stream is not None and stream in (sys.stderr, sys.__stderr__, sys.stdout, sys.__stdout__)


def _not_printed_by_root(record: _logging.LogRecord) -> bool:
    """False when the record propagates to a root handler that already prints it on the console."""
    logger = _logging.getLogger(ROOT)
    if not logger.propagate:
        return True
    root = _logging.getLogger()
    return not any(
        isinstance(h, _logging.StreamHandler)
        and not isinstance(h, _StderrHandler)
        and _console(getattr(h, "stream", None))
        and record.levelno >= h.level
        for h in root.handlers
    )


_handler: _StderrHandler | None = None


def _parse(level: int | str) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(f"verbosity {level!r} must be a logging level (an int such as logging.INFO) or a name")
    if isinstance(level, str):
        name = level.strip().lower()
        name = {"warn": "warning", "fatal": "critical"}.get(name, name)
        if name not in LEVELS:
            raise ValueError(f"verbosity {level!r} is not a level; use one of {', '.join(LEVELS)}")
        return LEVELS[name]
    return int(level)


def _level_from_env() -> int | None:
    """The level ``XLMRXL_VERBOSITY`` asks for; None when it is unset (or bad: said on stderr, default kept)."""
    if not os.environ.get(ENV, "").strip():
        return None
    try:
        return LEVELS[str(env.parse(ENV, os.environ[ENV]))]
    except env.EnvError as exc:  # importing xlmrxl must not fail on it: say so, keep the default
        sys.stderr.write(f"xlmrxl: {exc}; using warning\n")
        return None


def _configure() -> None:
    global _handler
    if _handler is None:
        _handler = _StderrHandler()
        for name in NAMES:
            _logging.getLogger(name).addHandler(_handler)
    level = _level_from_env()
    for name in NAMES:
        logger = _logging.getLogger(name)
        if level is not None:
            logger.setLevel(level)
        elif logger.level == NOTSET:
            logger.setLevel(DEFAULT_LEVEL)


def get_logger(name: str | None = None) -> _logging.Logger:
    """The library's logger (``"xlmrxl"``), or one below it (``get_logger("corpus")`` is ``"xlmrxl.corpus"``)."""
    if not name or name == ROOT:
        return _logging.getLogger(ROOT)
    return _logging.getLogger(name if name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def get_verbosity() -> int:
    """The effective level of the ``"xlmrxl"`` logger (``logging.WARNING`` by default)."""
    return _logging.getLogger(ROOT).getEffectiveLevel()


def set_verbosity(verbosity: int | str) -> None:
    """Set the level of everything xlmrxl and its kernels log: ``logging.INFO`` or ``"info"``, ``"debug"``, ..."""
    level = _parse(verbosity)
    for name in NAMES:
        _logging.getLogger(name).setLevel(level)


def set_verbosity_debug() -> None:
    """``set_verbosity(DEBUG)``."""
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    """``set_verbosity(INFO)``: also why an op runs the PyTorch reference instead of a kernel."""
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    """``set_verbosity(WARNING)``, the default."""
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    """``set_verbosity(ERROR)``: load warnings are hidden."""
    set_verbosity(ERROR)


def disable_default_handler() -> None:
    """Remove the stderr handler (the records still propagate to the application's own handlers)."""
    if _handler is not None:
        for name in NAMES:
            _logging.getLogger(name).removeHandler(_handler)


def enable_default_handler() -> None:
    """Put the stderr handler back."""
    _configure()
    for name in NAMES:
        _logging.getLogger(name).addHandler(_handler)


_configure()
