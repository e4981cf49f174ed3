"""The one vocabulary of "why not": a ``Reason`` is a one-line message with a stable ``code``.

Everything that declines a faster way says so the same way, as a list of reasons (the xformers
``not_supported_reasons`` idea): the route (``xlmrxl.fast.routing.route`` -> ``Route.not_supported``), the backend
(``Backend.kernel_not_supported``) and the kernels (``xlmrxl_kernels.<module>.<op>_not_supported``, which return
plain strings: ``xlmrxl_kernels`` never imports ``xlmrxl``, and a plain string is a reason with the code ``KERNEL``).
An empty list means "nothing stands in the way".
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Reason", "describe", "codes"]

# -- the route (xlmrxl.fast.routing): why a call does not run packed / cached ------------------------------------
TRACING = "tracing"  # torch.jit.trace, torch.compile or torch.export is recording the call
OUTPUT_ATTENTIONS = "output_attentions"
HEAD_MASK = "head_mask"
CROSS_ATTENTION = "cross_attention"
ATTENTION_MASK = "attention_mask"  # not a 2D padding mask of the call's shape
TRAINING = "training"  # training mode with dropout
AUTOGRAD = "autograd"  # autograd is recording: the fused path is inference-only
HOOKS = "hooks"  # forward hooks (global or on submodules) the fused path would skip
DEVICE_HOOKS = "device_hooks"  # accelerate's AlignDevicesHook (device_map / cpu_offload) wraps a forward
STRUCTURE = "structure"  # the modules are not laid out / configured as the fused layer needs
PADDED_LOSS = "padded_loss"  # the loss reads positions the packed path never computes
CALLER = "caller"  # a fact the caller established (the transformers patch: no 2D mask, outputs captured)
KV_CACHE = "kv_cache"  # packed: the call decodes with a KV cache
NO_KV_CACHE = "no_kv_cache"  # cached: the call has no KV cache
CACHE = "cache"  # cached: the cache (kind, or a bidirectional model) is not one the fused step drives
CUDA_GRAPHS = "cuda_graphs"  # a packed call runs eagerly, not through CUDA graphs (xlmrxl.fast.stack.graph_reasons)
# -- the backend (xlmrxl.backend): why an op runs its PyTorch reference ------------------------------------------
BACKEND = "backend"  # backend="reference"
DISABLED = "disabled"  # XLMRXL_DISABLE_KERNELS
DEVICE = "device"  # the tensors are not on a CUDA device
TRITON = "triton"  # Triton does not import
KERNEL = "kernel"  # the kernel's own <op>_not_supported(...) list (or a candidate's: it cannot take the call)
# -- the measured choice (xlmrxl_kernels.tuning via xlmrxl.backend.tuning_reasons): why a candidate does not run ------
SLOWER = "slower"  # measured slower than the chosen candidate on this device and shape bucket
TUNING_OFF = "tuning_off"  # XLMRXL_TUNING=off: the shipped / fixed default runs
CAPTURE = "capture"  # inside CUDA-graph capture: the cached choice or the default, never timed
NOT_MEASURED = "not_measured"  # nothing is timed on this device (CPU)
DEFAULT_ORDER = "default_order"  # an earlier candidate in the default order can take the call
MEASURE_FAILED = "measure_failed"  # the candidate raised while being measured
NO_CANDIDATE = "no_candidate"  # no candidate can take the call: the reference runs


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
    """The codes of ``reasons`` (``KERNEL`` for a plain string, as the kernels return)."""
    return [getattr(r, "code", KERNEL) for r in reasons]


def describe(reasons: Iterable[str]) -> str:
    """The reasons as one line, ``"; "``-separated."""
    return "; ".join(str(r) for r in reasons)
