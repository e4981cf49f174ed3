"""KV-cache ops for incremental decoding: the typed Python face of the compiled extension ``xlmrxl_kernels._C``.

    cache_update(k_cache, v_cache, k_new, v_new, positions, lengths=None) -> None
        k_cache[b, h, positions[b] + t, :] = k_new[b, h, t, :]   (and V)   for every b, h and t < lengths[b]
    cache_reorder(k_cache, v_cache, beam_idx, length=None) -> None
        k_cache[:, :, :length] = k_cache[beam_idx, :, :length]   (and V; beam search)
    cache_reset(k_cache, v_cache, start=0) -> None
        zero every slot at or after ``start``: start=0 resets, start=n crops the caches to n tokens
    cache_extension_available() -> bool

Shapes: caches (B, H, max_len, D), new keys / values (B, H, T, D), ``positions`` / ``lengths`` / ``beam_idx``
(B,) int32 or int64 **on the caches' device**. Dtypes float32, float16, bfloat16 (caches and new K/V alike); any
strides (transposed or sliced views are fine; caches must not be expanded views). All three ops work **in place and
return None**; they are not differentiable (run them under ``torch.no_grad()`` / inference mode).

- ``positions[b]`` is the first cache slot written for sequence b, so one call per layer writes a whole ragged batch:
  left padding (every row has the same start; pads are written and masked by the attention mask), right padding
  or per-sequence cache lengths (each row its own start; ``lengths[b]`` < T leaves row b's trailing pads unwritten).
- Bounds: on CPU, ``positions[b] + lengths[b] > max_len`` or a negative position raises ValueError naming the row.
  On CUDA, nothing is checked that would need a host sync: the kernel reads positions on the device (CUDA-graph
  safe) and **skips** any token whose slot falls outside [0, max_len), so a too-small cache silently drops tokens.
  Keep track of lengths on the host (``xlmrxl.StaticCache`` does) to get an error there.
- ``beam_idx`` range: checked on CPU (ValueError naming the entry). On CUDA it is **not** checked (that would need a
  device-to-host copy and sync per call); an entry outside [0, B) trips a device-side assert in the gather
  (``index out of bounds``), which poisons the CUDA context. Validate beam indices on the host when they come
  from untrusted input.
- CUDA: one kernel launch writes K and V, 16-byte vector copies when addresses and strides allow.
  ``cache_reorder`` gathers into a temporary and copies back (two asynchronous ops per cache, no sync).

Errors from the checks (compiled op and reference alike): TypeError for a wrong dtype, ValueError for a wrong
shape, device or value; messages name the tensor and the expected vs actual value, e.g.
"k_new must have 4 dims (B, H, T, D), got 3", "positions must be int32 or int64 on cpu, got float32 on cpu".

When ``_C`` cannot be imported (not built, or built against another torch), the ops run the PyTorch references of
``xlmrxl_kernels.reference.cache_update`` and one line on the ``xlmrxl`` logger says why. ``XLMRXL_REQUIRE_EXT=1``
(set in CI) turns that absence into an ImportError when this module is imported. A CPU-only build used with CUDA
tensors also falls back, with its own logged reason. Oracle: ``cache_update_ref`` and friends (same signatures).
"""

from __future__ import annotations

import importlib

import torch

from ._utils import env_flag
from .logs import log_once
from .reference.cache_update import cache_reorder_ref, cache_reset_ref, cache_update_ref

__all__ = [
    "cache_update",
    "cache_reorder",
    "cache_reset",
    "cache_extension_available",
    "cache_extension_unavailable_reason",
]


_BUILD_HINT = "build it with `pip install -e . --no-build-isolation` (or `python setup.py build_ext --inplace`)"


def _require_ext() -> bool:
    return env_flag("XLMRXL_REQUIRE_EXT")


def _load(module: str = "xlmrxl_kernels._C") -> tuple[object | None, str | None]:
    """Import the compiled module: (module, None), or (None, reason). Raises ImportError if XLMRXL_REQUIRE_EXT=1."""
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or an undefined-symbol OSError from a stale build
        reason = f"the C++ extension {module} is not available ({type(exc).__name__}: {exc})"
        if _require_ext():
            raise ImportError(f"XLMRXL_REQUIRE_EXT=1 but {reason}; {_BUILD_HINT}") from exc
        return None, reason


_C, _REASON = _load()


def cache_extension_available() -> bool:
    """True when the compiled extension ``xlmrxl_kernels._C`` is loaded (the ops then run C++ / CUDA code)."""
    return _C is not None


def cache_extension_unavailable_reason(device: torch.device | None = None) -> str | None:
    """None when the compiled op serves tensors on ``device`` (default: CPU); else why the reference runs."""
    if _C is None:
        return f"{_REASON}; {_BUILD_HINT}"
    if device is not None and torch.device(device).type == "cuda" and not _C.with_cuda():
        return (
            "xlmrxl_kernels._C was built without CUDA (torch was a CPU build, nvcc was missing, or "
            "XLMRXL_CUDA=0); rebuild it on this machine for the CUDA kernel"
        )
    return None


def _op(name: str, device: torch.device):
    reason = cache_extension_unavailable_reason(device)
    if reason is None:
        return getattr(_C, name)
    log_once(f"xlmrxl_kernels: KV-cache ops run the PyTorch reference: {reason}")
    return {"cache_update": cache_update_ref, "cache_reorder": cache_reorder_ref, "cache_reset": cache_reset_ref}[name]


def cache_update(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    positions: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> None:
    """Write ``k_new`` / ``v_new`` (B, H, T, D) into ``k_cache`` / ``v_cache`` (B, H, max_len, D) in place, sequence b
    starting at slot ``positions[b]`` (and writing only its first ``lengths[b]`` tokens when given). Returns None."""
    _op("cache_update", k_cache.device)(k_cache, v_cache, k_new, v_new, positions, lengths)


def cache_reorder(
    k_cache: torch.Tensor, v_cache: torch.Tensor, beam_idx: torch.Tensor, length: int | None = None
) -> None:
    """Reorder both caches along the batch in place, ``cache[b] = cache[beam_idx[b]]``, over the first ``length``
    slots (default: all). Returns None. ``beam_idx`` entries must lie in [0, B): checked on CPU; on CUDA an
    out-of-range entry is a device-side assert, not a Python error (see the module docstring)."""
    _op("cache_reorder", k_cache.device)(k_cache, v_cache, beam_idx, None if length is None else int(length))


def cache_reset(k_cache: torch.Tensor, v_cache: torch.Tensor, start: int = 0) -> None:
    """Zero every slot at or after ``start`` in both caches (0: reset; n: crop to n tokens). Returns None."""
    _op("cache_reset", k_cache.device)(k_cache, v_cache, int(start))
