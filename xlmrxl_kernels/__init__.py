"""xlmrxl_kernels: Triton kernels for XLM-RoBERTa-XL, each with a pure-PyTorch reference in
``xlmrxl_kernels.reference``, plus the Python face of the compiled KV-cache extension.

Every public name is bound here to its function; no submodule is named like one (the kernels live in ``norm``,
``flash``, ``gemm``, ``int4`` and ``kv_cache``; the op table in ``table``, the one choice in ``tuning``, the lean
launchers in ``lean``), so ``xlmrxl_kernels.<name>`` is the function whatever was imported before.

Importing this package never needs a GPU, and never needs Triton or the compiled extension: without Triton the
kernel names are bound to stubs that raise ImportError saying so (their ``*_not_supported`` give that reason, so
a dispatcher runs the references), and the KV-cache ops fall back to their references.
"""

from __future__ import annotations

from . import env, reference
from .kv_cache import (
    cache_extension_available,
    cache_extension_unavailable_reason,
    cache_reorder,
    cache_reset,
    cache_update,
)
from .reference.int4 import dequantize_int4_ref as dequantize_int4
from .reference.int4 import quantize_int4_ref as quantize_int4

_TRITON_NAMES = (
    "add_layernorm",
    "add_layernorm_not_supported",
    "attention",
    "attention_not_supported",
    "attention_varlen",
    "attention_varlen_not_supported",
    "linear_gelu",
    "linear_gelu_not_supported",
    "linear_residual",
    "linear_residual_not_supported",
    "int4_matmul",
    "int4_matmul_not_supported",
)

try:
    from .flash import attention, attention_not_supported, attention_varlen, attention_varlen_not_supported
    from .gemm import linear_gelu, linear_gelu_not_supported, linear_residual, linear_residual_not_supported
    from .int4 import int4_matmul, int4_matmul_not_supported
    from .norm import add_layernorm, add_layernorm_not_supported

    TRITON_UNAVAILABLE_REASON: str | None = None
except ImportError as _exc:  # no Triton on this machine: the references still work
    if getattr(_exc, "name", None) not in ("triton", "triton.language"):
        raise
    TRITON_UNAVAILABLE_REASON = f"Triton is not importable ({type(_exc).__name__}: {_exc})"

    def _stub(name: str):
        def missing(*args, **kwargs):
            raise ImportError(
                f"xlmrxl_kernels.{name} needs Triton: {TRITON_UNAVAILABLE_REASON}; use xlmrxl_kernels.reference "
                "(or install triton)"
            )

        def not_supported(*args, **kwargs) -> list[str]:
            return [str(TRITON_UNAVAILABLE_REASON)]

        fn = not_supported if name.endswith("_not_supported") else missing
        fn.__name__ = fn.__qualname__ = name
        return fn

    for _name in _TRITON_NAMES:
        globals()[_name] = _stub(_name)
    del _name

from . import tuning  # noqa: E402  (after the kernels: its candidates name them)

__all__ = [
    "TRITON_UNAVAILABLE_REASON",
    "add_layernorm",
    "add_layernorm_not_supported",
    "attention",
    "attention_not_supported",
    "attention_varlen",
    "attention_varlen_not_supported",
    "cache_extension_available",
    "cache_extension_unavailable_reason",
    "cache_reorder",
    "cache_reset",
    "cache_update",
    "dequantize_int4",
    "env",
    "int4_matmul",
    "int4_matmul_not_supported",
    "linear_gelu",
    "linear_gelu_not_supported",
    "linear_residual",
    "linear_residual_not_supported",
    "quantize_int4",
    "reference",
    "tuning",
]
