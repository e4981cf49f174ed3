"""The model's ``XLMRXL_*`` switches (backend, CUDA graphs, caches, corpus fault hooks, progress bars, verbosity,
serve), parsed by the one strict parser of ``xlmrxl_kernels.env`` (which holds the kernels' own switches); ``get`` /
``refresh`` / ``check_all`` see both sets."""

from __future__ import annotations

from xlmrxl_kernels.env import VARIABLES, EnvError, Variable, check_all, get, parse, refresh, register

__all__ = ["EnvError", "VARIABLES", "MODEL_VARIABLES", "check_all", "get", "parse", "refresh"]

MODEL_VARIABLES = (
    Variable(
        "XLMRXL_BACKEND",
        "choice",
        "auto",
        "kernels or references: auto, triton, reference",
        ("auto", "triton", "reference"),
    ),
    Variable(
        "XLMRXL_CUDA_GRAPHS",
        "choice",
        "auto",
        "CUDA graphs of the packed layer stack: auto, on, off, emulate (static-buffer path without capture)",
        ("auto", "on", "off", "emulate"),
        (("1", "on"), ("true", "on"), ("yes", "on"), ("0", "off"), ("false", "off"), ("no", "off")),
    ),
    Variable("XLMRXL_CACHE", "path", "", "cache directory of the demo assets (default ~/.cache/xlmrxl)"),
    Variable("XLMRXL_CORPUS_FAULT", "path", "", "tests only: <block_id>:<marker file> kills a corpus worker once"),
    Variable(
        "XLMRXL_PROGRESS",
        "choice",
        "auto",
        "progress bars on stderr (quantize, stdin batch commands, COMET predict): auto (when stderr is a "
        "terminal), on, off",
        ("auto", "on", "off"),
        (("1", "on"), ("true", "on"), ("yes", "on"), ("0", "off"), ("false", "off"), ("no", "off")),
    ),
    Variable(
        "XLMRXL_VERBOSITY",
        "choice",
        "warning",
        "level of what xlmrxl logs to stderr (xlmrxl.logging): debug, info, warning, error, critical",
        ("debug", "info", "warning", "error", "critical"),
        (("warn", "warning"), ("fatal", "critical")),
    ),
    Variable("XLMRXL_API_KEY", "path", "", "xlmrxl serve: the API key clients must send (as --api-key)"),
    Variable("XLMRXL_SERVE_TEST_DELAY", "path", "", "tests only: serve sleeps this per batch (10x at warm-up)"),
)
register(*MODEL_VARIABLES)
