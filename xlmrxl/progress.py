"""Progress bars for long work (quantize per layer, stdin batch commands, COMET predict, loading big checkpoints):
tqdm on stderr, in the corpus bar's style (a short description, a unit, rate and ETA).

``progress_bar(total, desc, unit, enabled=None)``: ``enabled=None`` follows ``XLMRXL_PROGRESS`` (``auto``, the
default: the bar only when stderr is a terminal, never in pipes, logs or tests; ``on``: always; ``off``: never);
True forces it (to stderr even when it is not a terminal); False never. ``resolve(enabled)`` is that decision. Without
tqdm installed, or when disabled, it returns a no-op object with the same ``update`` / ``set_postfix_str`` /
``close`` methods, so callers never branch.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any


class _NoBar:
    """What ``progress_bar`` returns when no bar is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def stderr_is_tty() -> bool:
    """Whether stderr is a terminal (the default condition for a bar)."""
    return sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def resolve(enabled: bool | None) -> bool:
    """Whether a bar is shown: ``enabled`` when given, else ``XLMRXL_PROGRESS`` (auto: stderr is a terminal)."""
    if enabled is not None:
        return bool(enabled)
    from . import env

    mode = env.get("XLMRXL_PROGRESS")
    return stderr_is_tty() if mode == "auto" else mode == "on"


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr, or a no-op bar; see the module docstring."""
    if not resolve(enabled):
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=0.2)


_LAYER = re.compile(r"^(.*?encoder\.layer\.\d+)\.")


def layer_of(name: str) -> str:
    """The encoder layer a linear belongs to (``roberta.encoder.layer.3``), or the name itself (a head)."""
    m = _LAYER.match(name)
    return m.group(1) if m else name


class LayerBar:
    """A progress bar that moves by one when the last of a layer's linears is quantized (``xlmrxl.progress``)."""

    def __init__(self, names: Sequence[str], method: str, progress: bool | None) -> None:
        self.left: dict[str, int] = {}
        for n in names:
            self.left[layer_of(n)] = self.left.get(layer_of(n), 0) + 1
        self.bar = progress_bar(len(self.left), f"xlmrxl quantize {method}", "layer", progress)

    def done(self, name: str) -> None:
        layer = layer_of(name)
        self.left[layer] -= 1
        if self.left[layer] == 0:
            self.bar.update(1)
            del self.left[layer]
            if not self.left:
                self.bar.close()

    def close(self) -> None:
        self.bar.close()
