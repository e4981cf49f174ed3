"""transformers' rules turning ``padding`` / ``truncation`` / ``max_length`` / ``pad_to_multiple_of`` into one
padding strategy, one truncation strategy and the length they work to."""

from __future__ import annotations

import logging
from typing import Any

from .checks import check_int

logger = logging.getLogger("xlmrxl")

VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
LARGE_INTEGER = int(1e20)  # above this, model_max_length counts as "not set"

_PADDING = ("longest", "max_length", "do_not_pad")
_TRUNCATION = ("longest_first", "only_first", "only_second", "do_not_truncate")


def resolve_strategies(
    padding: Any,
    truncation: Any,
    max_length: Any,
    pad_to_multiple_of: Any,
    model_max_length: int,
    verbose: bool = True,
) -> tuple[str, str, int | None]:
    """``(pad, trunc, max_length)``: pad in ``_PADDING``, trunc in ``_TRUNCATION``; ``max_length`` falls back to
    ``model_max_length`` when a strategy needs a length and none was given (and a limit is set); ``verbose=False``
    silences the warnings, as in transformers."""
    if pad_to_multiple_of is not None:
        pad_to_multiple_of = check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
    if max_length is not None and padding is False and truncation is None:
        truncation = "longest_first"  # transformers' default when only max_length is given
    if padding is True:
        pad = "longest"
    elif padding is False or padding is None:
        pad = "do_not_pad"
    elif isinstance(padding, str) and padding in _PADDING:
        pad = padding
    else:
        raise ValueError(f"padding={padding!r} is not valid; use False, True, 'longest' or 'max_length'")
    if truncation is True:
        trunc = "longest_first"
    elif truncation is False or truncation is None:
        trunc = "do_not_truncate"
    elif isinstance(truncation, str) and truncation in _TRUNCATION:
        trunc = truncation
    else:
        raise ValueError(
            f"truncation={truncation!r} is not valid; use False, True, 'longest_first', 'only_first' or 'only_second'"
        )
    if max_length is None:
        if pad == "max_length":
            if model_max_length > LARGE_INTEGER:
                if verbose:
                    logger.warning(
                        "xlmrxl: padding='max_length' without max_length, and the tokenizer has no "
                        "model_max_length: not padding. Pass max_length=N to pad."
                    )
                pad = "do_not_pad"
            else:
                max_length = model_max_length
        if trunc != "do_not_truncate":
            if model_max_length > LARGE_INTEGER:
                if verbose:
                    logger.warning(
                        "xlmrxl: truncation without max_length, and the tokenizer has no "
                        "model_max_length: not truncating. Pass max_length=N to truncate."
                    )
                trunc = "do_not_truncate"
            else:
                max_length = model_max_length
    else:
        max_length = check_int("max_length", max_length, 0)
    if (
        trunc != "do_not_truncate"
        and pad != "do_not_pad"
        and pad_to_multiple_of is not None
        and max_length is not None
        and max_length % pad_to_multiple_of != 0
    ):
        raise ValueError(
            f"truncation length max_length={max_length} is not a multiple of "
            f"pad_to_multiple_of={pad_to_multiple_of}; make one a multiple of the other"
        )
    return pad, trunc, max_length
