"""The one tiny XLM-RoBERTa-XL shape that tests, benchmarks' ``--tiny`` modes and client fixtures build from.

    XLMRobertaXLConfig(**tiny_config_kwargs())               # hidden 64, 4 heads (head dim 16), 3 layers, FFN 91
    dict(XL, **tiny_shape(num_hidden_layers=2))              # a benchmark's full-size config, shrunk

``tiny_shape`` is the four size fields only (to overlay on another config); ``tiny_config_kwargs`` the whole tiny
config (vocabulary 300, 66 positions, one token type, the usual special ids). Overrides win in both.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TINY_SHAPE", "tiny_shape", "tiny_config_kwargs"]

# intermediate 91: not a multiple of 8, so the kernels' masked tails are exercised
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=91)


def tiny_shape(**overrides: Any) -> dict[str, Any]:
    """The tiny size fields (hidden, layers, heads, intermediate), with ``overrides``."""
    return {**TINY_SHAPE, **overrides}


def tiny_config_kwargs(**overrides: Any) -> dict[str, Any]:
    """The keyword arguments of the tiny ``XLMRobertaXLConfig`` used across the tests, with ``overrides``."""
    kw = dict(
        vocab_size=300,
        **TINY_SHAPE,
        max_position_embeddings=66,
        type_vocab_size=1,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    kw.update(overrides)
    return kw
