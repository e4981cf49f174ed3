"""Shared helpers for the kernel files: environment flags, interpreter detection, autotune configs and launches,
device selection, output allocation, checks.

Nothing here touches a GPU at import time, and nothing here imports Triton (or ``xlmrxl``). ``XLMRXL_*`` switches
are parsed strictly and once by ``xlmrxl_kernels.env``; ``TRITON_INTERPRET`` is read once (Triton itself reads it
when a kernel is decorated, so a later change could not take effect anyway): ``refresh()`` re-reads both (tests).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

import torch

from . import env
from .logs import log_once

_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """A boolean environment variable. ``XLMRXL_*`` switches known to ``xlmrxl_kernels.env`` are parsed strictly
    and cached there (a bad value is an error naming the allowed ones); any other name (``TRITON_INTERPRET``):
    unset, "", "0", "false", "no", "off" (any case, spaces ignored) are False, anything else True."""
    if name in env.VARIABLES:
        return bool(env.get(name))
    return os.environ.get(name, "").strip().lower() not in _FALSE


_INTERPRETING: list[bool] = []


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``); read once, see ``refresh``."""
    if not _INTERPRETING:
        _INTERPRETING.append(env_flag("TRITON_INTERPRET"))
    return _INTERPRETING[0]


# the launchers' caches of launch plans (some constants depend on interpreting()): refresh() empties them
PLAN_CACHES: list = []


def plan_cache() -> dict:
    """A new launch-plan cache (argument layout -> checked launch constants), emptied by ``refresh()``."""
    cache: dict = {}
    PLAN_CACHES.append(cache)
    return cache


def refresh() -> None:
    """Re-read ``TRITON_INTERPRET`` and every ``XLMRXL_*`` switch on next use (tests that change the environment);
    empty the launchers' cached launch plans."""
    _INTERPRETING.clear()
    env.refresh()
    for cache in PLAN_CACHES:
        cache.clear()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host integers (``triton.cdiv`` from Python goes through Triton's function wrapper: a few
    microseconds per call on the launch path)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for host integers, without Triton's function wrapper (0 -> 0, 1 -> 1, 5 -> 8)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def autotune_configs(configs: Sequence, interpret_config=None) -> list:
    """The autotune list for a kernel: all of ``configs`` on a GPU, one config under the interpreter.

    Several configs fail or crawl under the interpreter, so CI uses ``interpret_config`` (default: the first).
    """
    if interpreting():
        return [interpret_config if interpret_config is not None else configs[0]]
    return list(configs)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _tuned(kernel, args: tuple, kwargs: dict) -> bool:
    """Whether ``kernel`` (a ``triton.autotune`` object) already holds a tuned config for these arguments, i.e. a
    launch would not benchmark. Mirrors the autotuner's cache key (the ``key`` arguments, then the dtype of every
    tensor argument), which is the same in Triton 3.x; anything unexpected counts as "not tuned"."""
    try:
        if len(kernel.configs) <= 1:
            return True
        named = dict(zip(kernel.arg_names, args))
        named.update((k, v) for k, v in kwargs.items() if k in kernel.arg_names)
        key = [named[k] for k in kernel.keys if k in named]
        key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
        return tuple(key) in kernel.cache
    except Exception:  # pragma: no cover - a Triton whose autotuner internals differ
        return False


def launch_autotuned(
    kernel, grid, args: tuple, kwargs: dict, default: Callable[[dict], object], cuda: bool | None = None
) -> None:
    """``kernel[grid](*args, **kwargs)`` for a ``triton.autotune`` kernel, safe inside CUDA-graph capture.

    Autotuning benchmarks every config with synchronising timings, which breaks a ``torch.cuda.graph`` capture. So
    when the current stream is capturing and this key has not been tuned yet, the launch skips the autotuner and
    runs ``default(named_args)`` (a ``triton.Config`` valid for these arguments) directly, with one warning on the
    ``xlmrxl`` logger; one eager warm-up call before capture gets the tuned config into the graph instead. Outside
    capture, and under the interpreter, this is exactly ``kernel[grid](*args, **kwargs)``. ``cuda``: whether the
    arguments are on a CUDA device, when the caller knows (a cached launch plan); else read from the arguments.
    """
    if cuda is None:
        capturing = _capturing(_first_device(args))
    else:
        capturing = cuda and torch.cuda.is_current_stream_capturing()
    if not capturing or _tuned(kernel, args, kwargs):
        kernel[grid](*args, **kwargs)
        return
    named = {**dict(zip(kernel.arg_names, args)), **kwargs}
    config = default(named)
    name = getattr(getattr(kernel, "base_fn", None), "__name__", "kernel")
    msg = (
        f"xlmrxl_kernels: {name} was first launched inside CUDA-graph capture, where Triton cannot autotune; it runs "
        f"the default config {config} instead. Run one eager warm-up call before capturing to use the tuned one."
    )
    log_once(msg, logging.WARNING)
    kernel.fn[grid](*args, **kwargs, **config.all_kwargs())


def _first_device(args: tuple) -> torch.device:
    a = args[0] if args else None
    if isinstance(a, torch.Tensor):  # every launcher's first argument
        return a.device
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def on_tensor_device(fn: Callable) -> Callable:
    """Decorator for kernel launchers: run ``fn`` with the device of its first tensor argument made current.

    Triton launches on the *current* CUDA device and its current stream, so a tensor on ``cuda:1`` while
    ``cuda:0`` is current would be handed to a kernel on the wrong GPU. When the first tensor argument is on a CUDA
    device other than the current one, ``fn`` runs inside ``torch.cuda.device(index)``; otherwise (the usual case,
    and CPU tensors under the interpreter) it is called directly, at the cost of one ``current_device()`` query.
    CPU tensors outside Triton's interpreter get a clear error instead of Triton's driver error.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        a = args[0] if args else None
        if isinstance(a, torch.Tensor):  # the usual case: the first argument is a tensor
            dev = a.device
            if dev.type == "cuda":
                if dev.index is not None and dev.index != torch.cuda.current_device():
                    with torch.cuda.device(dev.index):
                        return fn(*args, **kwargs)
                return fn(*args, **kwargs)
            if interpreting():
                return fn(*args, **kwargs)
        for a in args:
            if isinstance(a, torch.Tensor):
                dev = a.device
                if dev.type == "cuda":
                    if dev.index is not None and dev.index != torch.cuda.current_device():
                        with torch.cuda.device(dev.index):
                            return fn(*args, **kwargs)
                elif not interpreting():
                    raise _not_cuda(dev)
                break
        return fn(*args, **kwargs)

    return wrapper


def _not_cuda(dev: torch.device) -> RuntimeError:
    # otherwise Triton fails with "0 active drivers", which tells a user nothing
    return RuntimeError(
        f"the Triton kernels need CUDA tensors, got a tensor on {dev.type}. On CPU use the PyTorch "
        "references (xlmrxl_kernels.reference.<op>_ref, or backend='auto' / 'reference' in the "
        "model), or set TRITON_INTERPRET=1 before the first kernel import to run the kernels in "
        "Triton's CPU interpreter (for testing)"
    )


def device_switch(t: torch.Tensor):
    """``on_tensor_device`` inlined for the hot launchers (no wrapper frame): ``None`` when launches for ``t`` can
    run as they are (``t`` on the current CUDA device, or on CPU under the interpreter), else the
    ``torch.cuda.device`` context to run them in; a CPU tensor outside the interpreter is the same clear error."""
    dev = t.device
    if dev.type == "cuda":
        index = dev.index
        if index is not None and index != torch.cuda.current_device():
            return torch.cuda.device(index)
        return None
    if interpreting():
        return None
    raise _not_cuda(dev)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (cached per device index)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def empty(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    """Allocate a kernel output. With ``XLMRXL_POISON=1`` (set by the tests) it is pre-filled with NaN
    (or the dtype's max for integers) so that any element a kernel forgets to write is caught."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if env.get("XLMRXL_POISON"):
        _poison(out)
    return out


def empty_as(t: torch.Tensor, shape: tuple | None = None) -> torch.Tensor:
    """``empty(shape, dtype=t.dtype, device=t.device)`` (``shape`` default: ``t``'s), contiguous, by the cheaper
    ``new_empty`` / ``empty_like`` calls of the launch path (each saves about a microsecond of argument parsing)."""
    if shape is None:
        out = torch.empty_like(t, memory_format=torch.contiguous_format)
    else:
        out = t.new_empty(shape)
    if env.get("XLMRXL_POISON"):
        _poison(out)
    return out


def _poison(out: torch.Tensor) -> None:
    if out.is_floating_point():
        out.fill_(float("nan"))
    else:
        out.fill_(torch.iinfo(out.dtype).max)


def check(cond: bool, msg: str) -> None:
    """Raise a ValueError with a message a user understands."""
    if not cond:
        raise ValueError(msg)


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")


def check_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of {names}")
