"""A model's size from its config alone, and the check that refuses, before anything is allocated, a model that
cannot fit its target device or whose tensors overflow (``num_hidden_layers=10**12``, ``hidden_size=10**12``).

- ``estimate_parameters(config)``: the parameter count of a masked-LM model of that config (XL: 3.48e9, XXL: 1.07e10),
  counted from the sizes, in Python integers (no overflow, nothing built).
- ``estimate_bytes(config, dtype, int4_group=None)``: its weight bytes in ``dtype``; with ``int4_group`` the encoder
  layers' linears count as int4 (half a byte a weight, plus a scale and a zero per group).
- ``check_fits(config, device, dtype, int4_group=None, what=...)``: ``ValueError`` naming the sizes and the fix when
  a tensor would exceed torch's 2**63-byte limit (any device), when the model needs more than the target device's
  memory (cuda: that GPU's total memory, whatever the host has; cpu: the host's RAM), or, on ``meta`` (never refused
  for its bytes), when it would build more layer modules than host memory can hold.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["check_fits", "device_memory", "estimate_bytes", "estimate_parameters"]

_MAX_BYTES = 2**63 - 1  # torch's storage sizes are int64
_MODULE_BYTES = 64 << 10  # host memory a layer's Python objects take, even on meta (a generous bound)


def _sizes(config: Any) -> tuple[int, ...]:
    g = lambda name, default: int(getattr(config, name, default) or default)  # noqa: E731
    return (
        g("vocab_size", 250880),
        g("hidden_size", 2560),
        g("num_hidden_layers", 36),
        g("intermediate_size", 10240),
        g("max_position_embeddings", 514),
        g("type_vocab_size", 1),
    )


def _layer_linears(config: Any) -> int:
    """Weights (not biases) of one encoder layer's linears (the ones int4 replaces)."""
    _, H, _, inter, _, _ = _sizes(config)
    cross = 4 * H * H if getattr(config, "add_cross_attention", False) else 0
    return 4 * H * H + 2 * H * inter + cross


def estimate_parameters(config: Any) -> int:
    """Parameters of an ``XLMRobertaXLForMaskedLM`` of ``config`` (tied decoder counted once), from the sizes."""
    V, H, L, inter, P, T = _sizes(config)
    embeddings = (V + P + T) * H
    per_layer = _layer_linears(config) + 4 * H + inter + H + 2 * H + 2 * H  # biases q/k/v/o, ffn, 2 LayerNorms
    if getattr(config, "add_cross_attention", False):
        per_layer += 4 * H + 2 * H
    head = H * H + H + 2 * H + V  # dense, LayerNorm, bias (the decoder weight is the word embeddings)
    if not getattr(config, "tie_word_embeddings", True):
        head += V * H
    return embeddings + L * per_layer + 2 * H + head


def estimate_bytes(config: Any, dtype: torch.dtype = torch.float32, int4_group: int | None = None) -> int:
    """Weight bytes in ``dtype``; with ``int4_group`` the encoder layers' linears as int4 of that group size."""
    item = torch.empty((), dtype=dtype, device="meta").element_size()
    params = estimate_parameters(config)
    if not int4_group:
        return params * item
    linears = _sizes(config)[2] * _layer_linears(config)
    int4 = linears // 2 + 2 * item * (linears // max(int(int4_group), 1))
    return (params - linears) * item + int4


def _largest_tensor(config: Any) -> int:
    V, H, _, inter, P, _ = _sizes(config)
    return max(V * H, P * H, H * inter, H * H)


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def device_memory(device: Any) -> int | None:
    """Total memory of ``device`` in bytes (cuda: that GPU's; cpu: the host's RAM); None when unknown or meta."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    if device.type == "cpu":
        return _host_memory()
    return None


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def check_fits(
    config: Any,
    device: Any = None,
    dtype: torch.dtype = torch.float32,
    int4_group: int | None = None,
    what: str = "the model",
) -> None:
    """Refuse (``ValueError``) a model of ``config`` that cannot be built on ``device`` in ``dtype``; see the module
    docstring. Nothing is allocated."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    V, H, L, inter, _, _ = _sizes(config)
    shape = f"hidden_size={H}, num_hidden_layers={L}, intermediate_size={inter}, vocab_size={V}"
    sizes_hint = (
        "check the config's sizes (XL: hidden_size=2560, 36 layers, 3.5e9 parameters; XXL: hidden_size=4096, "
        "48 layers, 1.07e10 parameters)"
    )
    item = torch.empty((), dtype=dtype, device="meta").element_size()
    if _largest_tensor(config) * item > _MAX_BYTES:
        raise ValueError(
            f"{what} cannot be built: with {shape} one weight would hold {_largest_tensor(config):.3g} values, "
            f"beyond torch's tensor size limit; {sizes_hint}"
        )
    host = _host_memory()
    if host is not None and L * _MODULE_BYTES > host:
        raise ValueError(
            f"{what} cannot be built: num_hidden_layers={L} would create {L:,} layer modules, more than this "
            f"host's memory ({_human(host)}) can hold even without weights; {sizes_hint}"
        )
    if device.type == "meta":
        return
    need = estimate_bytes(config, dtype, int4_group)
    total = device_memory(device)
    if total is not None and need > total:
        where = f"the GPU {device}" if device.type == "cuda" else "this host's RAM"
        raise ValueError(
            f"{what} needs about {_human(need)} for its {estimate_parameters(config):.3g} parameters in "
            f"{str(dtype).replace('torch.', '')}{' with int4 linears' if int4_group else ''} ({shape}), more than "
            f"{where} ({_human(total)}): {sizes_hint}; or load it with dtype=torch.bfloat16, quantization='int4', "
            "or on a device with more memory"
        )
