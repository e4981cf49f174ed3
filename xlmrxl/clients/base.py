"""What every client finder returns: the transformers model inside a client, and its client-level patches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

__all__ = ["Client", "describe", "is_xlmrxl_model"]


def _nothing(*_args) -> None:
    return None


@dataclass
class Client:
    """``kind``: what was found (for messages); ``model``: the transformers XLM-RoBERTa-XL model to accelerate;
    ``attach(backend)`` / ``detach()``: the client's own patches on top (idempotent; no-ops by default);
    ``supported``: False when ``model`` is another transformers model (BERT, XLM-R): the client is left unchanged."""

    kind: str
    model: nn.Module
    attach: Callable = _nothing
    detach: Callable = _nothing
    supported: bool = True


def describe(obj: object) -> str:
    """``module.Class`` of ``obj``, for error messages."""
    return f"{type(obj).__module__}.{type(obj).__name__}"


def is_xlmrxl_model(m: object) -> bool:
    """A transformers (or xlmrxl) XLM-RoBERTa-XL model: ``XLMRobertaXLModel`` or one of its task heads."""
    return (
        isinstance(m, nn.Module)
        and type(m).__name__.startswith("XLMRobertaXL")
        and type(m).__module__.split(".")[0] in ("transformers", "xlmrxl")
        and hasattr(m, "base_model_prefix")
    )
