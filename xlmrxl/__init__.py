"""xlmrxl: XLM-RoBERTa-XL / XXL with custom kernels, API-compatible with transformers' XLM-RoBERTa-XL classes.

    from xlmrxl import XLMRobertaXLForMaskedLM   # instead of `from transformers import ...`

``import xlmrxl`` never needs transformers, Triton or a GPU: those are imported only where they are used.
"""

from __future__ import annotations

# ``xlmrxl.clients`` / ``xlmrxl.comet`` (``xlmrxl.comet.load``): the COMET and sentence-transformers helpers. Importing
# them imports neither comet nor sentence_transformers (optional extras, imported inside the functions that need them).
# ``xlmrxl.logging``: the stderr handler and level of everything xlmrxl logs (the name ``logging`` in this namespace
# is that module, as ``transformers.logging`` is; modules of the package that ``import logging`` get the standard
# library's).
from . import clients, comet, logging
from .backend import Backend, resolve_backend
from .caches import DynamicCache, EncoderDecoderCache, StaticCache
from .config import XLMRobertaXLConfig
from .hf import accelerate, deaccelerate, from_transformers, is_accelerated, to_transformers
from .modeling import (
    XLMRobertaXLForCausalLM,
    XLMRobertaXLForMaskedLM,
    XLMRobertaXLForMultipleChoice,
    XLMRobertaXLForQuestionAnswering,
    XLMRobertaXLForSequenceClassification,
    XLMRobertaXLForTokenClassification,
    XLMRobertaXLModel,
    XLMRobertaXLPreTrainedModel,
)
from .pipelines import pipeline
from .quantization import quantize
from .record import last_route, reset_stats, stats
from .tokenizer import XLMRobertaTokenizer

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "DynamicCache",
    "EncoderDecoderCache",
    "StaticCache",
    "XLMRobertaTokenizer",
    "XLMRobertaXLConfig",
    "XLMRobertaXLForCausalLM",
    "XLMRobertaXLForMaskedLM",
    "XLMRobertaXLForMultipleChoice",
    "XLMRobertaXLForQuestionAnswering",
    "XLMRobertaXLForSequenceClassification",
    "XLMRobertaXLForTokenClassification",
    "XLMRobertaXLModel",
    "XLMRobertaXLPreTrainedModel",
    "__version__",
    "accelerate",
    "clients",
    "comet",
    "deaccelerate",
    "from_transformers",
    "is_accelerated",
    "last_route",
    "logging",
    "pipeline",
    "quantize",
    "reset_stats",
    "resolve_backend",
    "stats",
    "to_transformers",
]
