"""xlmrxl: XLM-RoBERTa-XL / XXL with custom kernels, API-compatible with transformers' XLM-RoBERTa-XL classes.

    from xlmrxl import XLMRobertaXLForMaskedLM   # instead of `from transformers import ...`

Names resolve lazily so that ``import xlmrxl`` stays cheap and never needs transformers, Triton or a GPU.
"""

from __future__ import annotations

import importlib
import logging

logging.getLogger("xlmrxl").addHandler(logging.NullHandler())

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "XLMRobertaXLConfig": "config",
    "XLMRobertaXLPreTrainedModel": "modeling",
    "XLMRobertaXLModel": "modeling",
    "XLMRobertaXLForMaskedLM": "modeling",
    "XLMRobertaXLForCausalLM": "modeling",
    "XLMRobertaXLForSequenceClassification": "modeling",
    "XLMRobertaXLForMultipleChoice": "modeling",
    "XLMRobertaXLForTokenClassification": "modeling",
    "XLMRobertaXLForQuestionAnswering": "modeling",
    "XLMRobertaTokenizer": "tokenizer",
    "pipeline": "pipelines",
    "quantize": "quantization",
    "DynamicCache": "cache",
    "StaticCache": "static_cache",
    "EncoderDecoderCache": "cache",
    "accelerate": "accelerate",
    "from_transformers": "accelerate",
    "to_transformers": "accelerate",
    "deaccelerate": "accelerate",
    "is_accelerated": "accelerate",
    "resolve_backend": "backend",
    "Backend": "backend",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in ("comet", "clients"):  # COMET / sentence-transformers helpers: submodules, imported on first use
        return importlib.import_module(f".{name}", __name__)
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'xlmrxl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
