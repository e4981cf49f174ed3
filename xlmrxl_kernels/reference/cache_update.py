"""Pure-PyTorch oracles of the KV-cache ops of ``xlmrxl_kernels.kv_cache`` (same signatures, same semantics).

- ``cache_update_ref(k_cache, v_cache, k_new, v_new, positions, lengths=None)``:
  ``k_cache[b, :, positions[b] + t] = k_new[b, :, t]`` for ``t < lengths[b]`` (default: all T), same for V.
- ``cache_reorder_ref(k_cache, v_cache, beam_idx, length=None)``:
  ``cache[:, :, :length] = cache[beam_idx, :, :length]``.
- ``cache_reset_ref(k_cache, v_cache, start=0)``: zero every slot at or after ``start``.

All three work in place and return None. Caches are (B, H, max_len, D), new keys / values (B, H, T, D).
They are also the fallback when the compiled extension is missing. On CPU the bounds are checked (a ValueError
names the row); on CUDA the checks that would need a host sync are skipped (``scatter_`` asserts on the device).
With ``lengths`` given, the oracle loops over the batch in Python (it reads ``lengths`` on the host).
"""

from __future__ import annotations

import torch

__all__ = ["cache_update_ref", "cache_reorder_ref", "cache_reset_ref"]


def _check_caches(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must have 4 dims (B, H, max_len, D), got {k_cache.dim()}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have the shape of k_cache {list(k_cache.shape)}, got {list(v_cache.shape)}")
    if k_cache.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"k_cache must be float32, float16 or bfloat16, got {_name(k_cache.dtype)}")
    if v_cache.dtype != k_cache.dtype:
        raise TypeError(f"v_cache must have the dtype of k_cache ({_name(k_cache.dtype)}), got {_name(v_cache.dtype)}")
    if v_cache.device != k_cache.device:
        raise ValueError(f"v_cache must be on the device of k_cache ({k_cache.device}), got {v_cache.device}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_index(name: str, t: torch.Tensor, batch: int, device: torch.device) -> None:
    if t.dtype not in (torch.int32, torch.int64) or t.device != device:
        err = TypeError if t.dtype not in (torch.int32, torch.int64) else ValueError
        raise err(f"{name} must be int32 or int64 on {device}, got {_name(t.dtype)} on {t.device}")
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {list(t.shape)}")


def cache_update_ref(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    positions: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> None:
    _check_caches(k_cache, v_cache)
    if k_new.dim() != 4:
        raise ValueError(f"k_new must have 4 dims (B, H, T, D), got {k_new.dim()}")
    B, H, L, D = k_cache.shape
    T = k_new.shape[2]
    if v_new.shape != k_new.shape or (k_new.shape[0], k_new.shape[1], k_new.shape[3]) != (B, H, D):
        raise ValueError(
            f"k_new and v_new must have shape (B, H, T, D) = ({B}, {H}, T, {D}) to match k_cache, "
            f"got {list(k_new.shape)} and {list(v_new.shape)}"
        )
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if t.dtype != k_cache.dtype:
            raise TypeError(f"{name} must have the dtype of k_cache ({_name(k_cache.dtype)}), got {_name(t.dtype)}")
        if t.device != k_cache.device:
            raise ValueError(f"{name} must be on the device of k_cache ({k_cache.device}), got {t.device}")
    _check_index("positions", positions, B, k_cache.device)
    if lengths is not None:
        _check_index("lengths", lengths, B, k_cache.device)
    if B == 0 or T == 0:
        return
    if lengths is not None or positions.device.type == "cpu":
        pos = positions.tolist()
        lens = lengths.tolist() if lengths is not None else [T] * B
        for b, (p, n) in enumerate(zip(pos, lens)):
            if not 0 <= n <= T:
                raise ValueError(f"lengths[{b}] = {n} must be in [0, T = {T}]")
            if p < 0 or p + n > L:
                raise ValueError(
                    f"positions[{b}] = {p} with {n} new tokens does not fit in max_len = {L}; "
                    "allocate the cache with a larger max_len, or crop / reset it"
                )
        if lengths is not None:
            for b, (p, n) in enumerate(zip(pos, lens)):
                k_cache[b, :, p : p + n] = k_new[b, :, :n]
                v_cache[b, :, p : p + n] = v_new[b, :, :n]
            return
    # Slot of every new token: positions[b] + t, broadcast over heads and D for scatter_ (no host sync).
    idx = positions.to(torch.int64)[:, None] + torch.arange(T, device=positions.device)
    idx = idx[:, None, :, None].expand(B, H, T, D)
    k_cache.scatter_(2, idx, k_new)
    v_cache.scatter_(2, idx, v_new)


def cache_reorder_ref(
    k_cache: torch.Tensor, v_cache: torch.Tensor, beam_idx: torch.Tensor, length: int | None = None
) -> None:
    _check_caches(k_cache, v_cache)
    B, _, L, _ = k_cache.shape
    _check_index("beam_idx", beam_idx, B, k_cache.device)
    n = L if length is None else int(length)
    if not 0 <= n <= L:
        raise ValueError(f"length must be in [0, max_len = {L}], got {n}")
    for cache in (k_cache, v_cache):
        prefix = cache[:, :, :n]
        prefix.copy_(prefix.index_select(0, beam_idx))


def cache_reset_ref(k_cache: torch.Tensor, v_cache: torch.Tensor, start: int = 0) -> None:
    _check_caches(k_cache, v_cache)
    L = k_cache.shape[2]
    if not 0 <= int(start) <= L:
        raise ValueError(f"start must be in [0, max_len = {L}], got {start}")
    k_cache[:, :, int(start) :].zero_()
    v_cache[:, :, int(start) :].zero_()
