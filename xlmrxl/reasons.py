"""The route's codes of "why not", on top of the one ``Reason`` vocabulary of ``xlmrxl_kernels.reasons``.

Everything that declines a faster way says so the same way, as a list of ``Reason`` objects (the xformers
``not_supported_reasons`` idea): the route (``xlmrxl.fast.routing.route`` -> ``Route.not_supported``), the op
choice (``Backend.kernel_not_supported``, ``xlmrxl_kernels.tuning.Choice.reasons``) and the kernels
(``xlmrxl_kernels.<op>_not_supported``). The class, ``describe``, ``codes`` and the op-choice codes are defined in
``xlmrxl_kernels.reasons`` (which never imports ``xlmrxl``) and re-exported here. An empty list means "nothing
stands in the way".
"""

from __future__ import annotations

from xlmrxl_kernels.reasons import (  # noqa: F401  (re-exported: one vocabulary for route, op choice and kernels)
    BACKEND,
    CAPTURE,
    DEFAULT_ORDER,
    DEVICE,
    DISABLED,
    KERNEL,
    MEASURE_FAILED,
    NO_CANDIDATE,
    NOT_MEASURED,
    SLOWER,
    TRITON,
    TUNING_OFF,
    Reason,
    codes,
    describe,
)

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
