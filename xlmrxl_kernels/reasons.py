"""The one vocabulary of "why not": a ``Reason`` is a one-line message with a stable ``code``.

Everything that declines a faster way says so the same way, as a list of reasons (the xformers
``not_supported_reasons`` idea): the op table's entries and the choice among them (``xlmrxl_kernels.table``,
``xlmrxl_kernels.tuning``), the kernels' own ``<op>_not_supported``, and, in the model package, the route
(``xlmrxl.fast.routing``; ``xlmrxl.reasons`` re-exports this module and adds the route's codes).
An empty list means "nothing stands in the way". This module imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Reason", "describe", "codes"]

# -- an entry of the op table cannot take the call (its hard limits: dtype, device, shapes, features) -------------
KERNEL = "kernel"  # the entry's own not_supported list (a plain string from a kernel has this code)
DEVICE = "device"  # the tensors are on a device the entry does not run on
TRITON = "triton"  # Triton does not import
# -- the choice forced or ruled out an entry ----------------------------------------------------------------------
BACKEND = "backend"  # backend="reference": no Triton kernel, no measured PyTorch implementation
DISABLED = "disabled"  # XLMRXL_DISABLE_KERNELS
# -- the measured choice (xlmrxl_kernels.tuning): why an entry that can take the call does not run ----------------
SLOWER = "slower"  # measured slower than the chosen entry on this device and shape bucket
TUNING_OFF = "tuning_off"  # XLMRXL_TUNING=off: the shipped / fixed default runs
CAPTURE = "capture"  # inside CUDA-graph capture: the cached choice or the default, never timed
NOT_MEASURED = "not_measured"  # nothing is timed on this device (CPU): the rule chose
DEFAULT_ORDER = "default_order"  # an earlier entry in the table's order can take the call
MEASURE_FAILED = "measure_failed"  # the entry raised while being measured
NO_CANDIDATE = "no_candidate"  # no entry can take the call: the reference runs


class Reason(str):
    """A one-line reason (``str(reason)`` is the message) with a stable ``code`` from this module's constants."""

    code: str

    def __new__(cls, code: str, message: str) -> Reason:
        self = super().__new__(cls, message)
        self.code = code
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # pickling (a str subclass with a second argument)
        return (self.code, str(self))

    def __repr__(self) -> str:
        return f"Reason({self.code!r}, {str(self)!r})"


def codes(reasons: Iterable[str]) -> list[str]:
    """The codes of ``reasons`` (``KERNEL`` for a plain string, as a kernel's ``not_supported`` may return)."""
    return [getattr(r, "code", KERNEL) for r in reasons]


def describe(reasons: Iterable[str]) -> str:
    """The reasons as one line, ``"; "``-separated."""
    return "; ".join(str(r) for r in reasons)
