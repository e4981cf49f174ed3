"""Pure-PyTorch oracles of every kernel, with the same signatures (``<op>_ref``).

They run anywhere (CPU included) and are what the model layer uses when a kernel is not chosen.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "add_layernorm_ref": "add_layernorm",
    "attention_ref": "attention",
    "attention_varlen_ref": "attention",
    "linear_gelu_ref": "linear_gelu",
    "linear_residual_ref": "linear_gelu",
    "quantize_int4_ref": "int4",
    "dequantize_int4_ref": "int4",
    "int4_matmul_ref": "int4",
    "cache_update_ref": "cache_update",
    "cache_reorder_ref": "cache_update",
    "cache_reset_ref": "cache_update",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'xlmrxl_kernels.reference' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
