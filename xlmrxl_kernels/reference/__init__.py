"""Pure-PyTorch oracles of every kernel, with the same signatures (``<op>_ref``).

They run anywhere (CPU included) and are what the model layer uses when a kernel is not chosen. Every name is
bound eagerly (no lazy module attributes). A reference that upcasts computes in
``torch.promote_types(dtype, torch.float32)``: fp32 for half inputs, fp64 for fp64 inputs (so ``model.double()``
keeps fp64 precision end to end).
"""

from __future__ import annotations

from .add_layernorm import add_layernorm_ref
from .attention import attention_ref, attention_varlen_ref
from .cache_update import cache_reorder_ref, cache_reset_ref, cache_update_ref
from .int4 import dequantize_int4_ref, int4_matmul_ref, quantize_int4_ref
from .linear_gelu import linear_gelu_ref, linear_residual_ref

__all__ = [
    "add_layernorm_ref",
    "attention_ref",
    "attention_varlen_ref",
    "cache_reorder_ref",
    "cache_reset_ref",
    "cache_update_ref",
    "dequantize_int4_ref",
    "int4_matmul_ref",
    "linear_gelu_ref",
    "linear_residual_ref",
    "quantize_int4_ref",
]
