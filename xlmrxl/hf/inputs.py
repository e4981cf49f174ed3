"""What the accelerated encoder reads from transformers' call: the 2D padding mask (captured, or recovered from the 4D
mask the encoder was given), transformers 5.x's output capture (hidden states collected by hooks), and the cache
transformers would create for ``use_cache=True``."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["padding_mask", "capture_state", "fill_hidden_states", "new_cache"]


def padding_mask(
    captured: tuple | None, mask: torch.Tensor | None, B: int, S: int, causal: bool
) -> tuple[torch.Tensor | None, str | None]:
    """The call's 2D keep mask (or None: every key real) and None; or (None, why it cannot be read).
    The user's 2D mask captured at the model's forward wins (it covers the cached keys too); else the mask the encoder
    was given is read back: 2D as is, 4D when it is a plain padding (+ causal) mask over the call's own keys."""
    if captured is not None:
        m = captured[0]
        if m is None or (torch.is_tensor(m) and m.dim() == 2 and m.shape[0] == B):
            return m, None
    # The encoder was called directly, or with a mask the model expanded itself: read it back from what we got.
    if mask is None:
        return None, None
    if not torch.is_tensor(mask):
        return None, f"attention mask of type {type(mask).__name__} is not a tensor"
    if mask.dim() == 2:
        return mask, None
    if (
        mask.dim() != 4
        or mask.shape[0] != B
        or mask.shape[1] != 1
        or mask.shape[-1] != S
        or mask.shape[2] not in (1, S)
    ):
        return None, f"attention mask of shape {tuple(mask.shape)} is not a (batch, 1, q, keys) padding mask"
    keep = mask if mask.dtype == torch.bool else mask == 0  # additive masks: 0 = attend, dtype-min = masked
    row = keep[:, 0, -1, :]
    if keep.shape[2] > 1 or causal:
        expected = row[:, None, None, :].expand(B, 1, S, S)
        if causal:
            expected = expected & torch.ones(S, S, dtype=torch.bool, device=keep.device).tril()
        if keep.shape[2] == 1 or not torch.equal(keep, expected):
            return None, "the 4D attention mask is not a plain padding mask (custom masks run the exact path)"
    return row, None


def capture_state(config: Any) -> tuple[str | None, dict | None]:
    """transformers 5.x records hidden states / attentions with hooks on the layers while a collection is active.
    Returns (reason or None, the collected-outputs dict to fill with hidden states or None)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except Exception:
        return None, None
    try:
        collected = _active_collector.get()
    except Exception:  # pragma: no cover - private API changed
        return "cannot tell whether transformers is capturing layer outputs", None
    keys = [k for k in (collected or {}) if not k.startswith("_")]
    if not keys:
        return None, None
    tie = getattr(config, "tie_last_hidden_states", None)
    if (
        keys == ["hidden_states"]
        and isinstance(collected["hidden_states"], list)
        and not collected["hidden_states"]
        and tie in (None, True)
    ):
        return None, collected
    return f"transformers is capturing {', '.join(keys)} with layer hooks (output_attentions)", None


def fill_hidden_states(collected: dict, all_hs: tuple[torch.Tensor, ...]) -> None:
    """Append the hidden states the way transformers' capture hooks would (its selection of indices honoured)."""
    out = collected["hidden_states"]
    selection = collected.get("_hidden_states_layers")
    for h in all_hs:
        out.append(h if selection is None or len(out) in selection else None)


def new_cache(config: Any, encoder_decoder: bool) -> Any:
    """The cache transformers' own encoder would create for ``use_cache=True`` without one."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    def dyn():
        try:
            return DynamicCache(config=config)
        except TypeError:  # older signatures take no config
            return DynamicCache()

    return EncoderDecoderCache(dyn(), dyn()) if encoder_decoder else dyn()
