"""The one parser of every ``XLMRXL_*`` environment switch (strict values, read once, cached), and the kernels'
own switches: kernels (``XLMRXL_DISABLE_KERNELS``), tuning, debug checks, poison, the compiled extension. The model
package registers its switches (backend, CUDA graphs, caches, corpus fault hooks) from ``xlmrxl.env``.

Each variable has a kind and a fixed set of allowed values; an unknown value raises :class:`EnvError` (a
``ValueError``) naming the variable, the value and the allowed values, e.g.::

    XLMRXL_CUDA_GRAPHS='maybe' is not allowed; use one of: auto, on, off, emulate (unset means auto)

``get(name)`` returns the parsed value and caches it: the hot path never reads ``os.environ``. Tests (or a program
that changes ``os.environ`` on purpose) call ``refresh()`` to read again. ``check_all()`` parses every known
variable that is set and warns once about ``XLMRXL_*`` names nobody reads (typos such as ``XLMRXL_TUNNING``).

Booleans accept ``1/0, true/false, yes/no, on/off`` (any case, surrounding spaces ignored; empty = default).
``XLMRXL_DISABLE_KERNELS`` is a comma-separated list of op names from :data:`OPS`.
This module imports only the standard library (never Triton, torch or ``xlmrxl``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("xlmrxl_kernels")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# the ops the kernels package dispatches (XLMRXL_DISABLE_KERNELS names them)
OPS = ("add_layernorm", "attention", "attention_varlen", "linear_gelu", "linear_residual", "int4_matmul")


class EnvError(ValueError):
    """An ``XLMRXL_*`` variable holds a value outside its allowed set."""


@dataclass(frozen=True)
class Variable:
    """One switch: ``kind`` is "bool", "choice", "ops" (comma list of OPS) or "path"; ``choices`` maps every accepted
    spelling to its canonical value (for "choice")."""

    name: str
    kind: str
    default: object
    doc: str
    choices: tuple = ()
    aliases: tuple = ()  # (spelling, canonical) pairs accepted besides the choices themselves


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            "XLMRXL_TUNING",
            "choice",
            "on",
            "measured choice of implementation per op and shape (on) or the fixed defaults (off)",
            ("on", "off"),
            (("1", "on"), ("true", "on"), ("yes", "on"), ("auto", "on"), ("0", "off"), ("false", "off"), ("no", "off")),
        ),
        Variable("XLMRXL_TUNING_CACHE", "path", "", "file of measured choices (default ~/.cache/xlmrxl/tuning.json)"),
        Variable("XLMRXL_DISABLE_KERNELS", "ops", frozenset(), "comma-separated ops that always run PyTorch"),
        Variable("XLMRXL_DEBUG_CHECKS", "bool", False, "validate cu_seqlens on the device too (a sync per call)"),
        Variable("XLMRXL_POISON", "bool", False, "fill kernel outputs with NaN before launch (tests)"),
        Variable("XLMRXL_REQUIRE_EXT", "bool", False, "a missing compiled extension is an ImportError (CI)"),
        Variable("XLMRXL_BUILD_EXT", "bool", True, "setup.py: build the compiled extension"),
        Variable("XLMRXL_CUDA", "bool", True, "setup.py: build the CUDA part of the extension"),
    )
}


def register(*variables: Variable) -> None:
    """Add switches parsed by this module (the model package's, from ``xlmrxl.env``)."""
    for v in variables:
        VARIABLES[v.name] = v


_CACHE: dict[str, object] = {}
_WARNED: set[str] = set()


def _allowed(var: Variable) -> str:
    if var.kind == "bool":
        return "1, 0, true, false, yes, no, on, off"
    if var.kind == "ops":
        return "a comma-separated list of " + ", ".join(OPS)
    if var.kind == "choice":
        return ", ".join(var.choices)
    return "any path"


def parse(name: str, raw: str | None) -> object:
    """Parse ``raw`` (the variable's text, None when unset) as the variable ``name`` would be; raises EnvError."""
    var = VARIABLES.get(name)
    if var is None:
        raise KeyError(f"{name} is not an xlmrxl environment variable; known: {', '.join(sorted(VARIABLES))}")
    text = "" if raw is None else raw.strip()
    if not text:
        return var.default
    if var.kind == "path":
        return text
    low = text.lower()
    if var.kind == "bool":
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    elif var.kind == "choice":
        if low in var.choices:
            return low
        alias = dict(var.aliases).get(low)
        if alias is not None:
            return alias
    elif var.kind == "ops":
        names = [s.strip() for s in low.split(",") if s.strip()]
        unknown = [s for s in names if s not in OPS]
        if not unknown:
            return frozenset(names)
        raise EnvError(f"{name}={raw!r} names unknown ops {unknown}; use {_allowed(var)}")
    raise EnvError(f"{name}={raw!r} is not allowed; use one of: {_allowed(var)} (unset means {_default_text(var)})")


def _default_text(var: Variable) -> str:
    d = var.default
    if isinstance(d, bool):
        return "1" if d else "0"
    return str(d) if d != "" else "the default"


def get(name: str) -> object:
    """The parsed value of ``name``, read from ``os.environ`` once and cached (see ``refresh``)."""
    try:
        return _CACHE[name]
    except KeyError:
        value = _CACHE[name] = parse(name, os.environ.get(name))
        return value


def refresh() -> None:
    """Forget every cached value: the next ``get`` reads ``os.environ`` again."""
    _CACHE.clear()


def check_all() -> dict[str, object]:
    """Parse every known variable (raising EnvError on the first bad value) and warn once about unknown
    ``XLMRXL_*`` names; returns {name: value}. The model layer calls this when a model is built."""
    for key in os.environ:
        if key.startswith("XLMRXL_") and key not in VARIABLES and key not in _WARNED:
            _WARNED.add(key)
            logger.warning(
                "xlmrxl_kernels: the environment variable %s is not read by xlmrxl (known: %s)",
                key,
                ", ".join(VARIABLES),
            )
    return {name: get(name) for name in VARIABLES}
