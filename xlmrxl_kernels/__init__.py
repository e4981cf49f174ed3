"""xlmrxl_kernels: Triton kernels for XLM-RoBERTa-XL, each with a pure-PyTorch reference in
``xlmrxl_kernels.reference``, plus the Python face of the compiled KV-cache extension.

Importing this package never needs a GPU, and never needs Triton or the compiled extension: names resolve lazily,
so a machine without them can still use the references.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "add_layernorm": "add_layernorm",
    "attention": "attention",
    "attention_varlen": "attention",
    "linear_gelu": "linear_gelu",
    "linear_residual": "linear_gelu",
    "quantize_int4": "int4",
    "dequantize_int4": "int4",
    "int4_matmul": "int4",
    "cache_update": "cache_update",
    "cache_reorder": "cache_update",
    "cache_reset": "cache_update",
    "cache_extension_available": "cache_update",
}

__all__ = sorted(_EXPORTS) + ["reference"]


def __getattr__(name: str):
    if name == "reference":
        return importlib.import_module(".reference", __name__)
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'xlmrxl_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
