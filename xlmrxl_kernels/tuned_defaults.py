"""Shipped measured choices, so a cold start on a known GPU is good too: device name -> {key text: candidate}.

Key text is ``<op>|<shape key fields>`` exactly as ``xlmrxl_kernels.tuning`` writes them to its disk cache, e.g.
``"linear_gelu|4096|10240|2560|bfloat16|bfloat16|bfloat16": "triton"`` (M bucket, N, K, then
every tensor argument's dtype). A device entry applies when its name equals
``torch.cuda.get_device_name()`` or is contained in it ("H100" matches "NVIDIA H100 80GB HBM3").

Filled from GPU runs: ``benchmarks/lease.sh`` runs with ``XLMRXL_TUNING_CACHE=benchmarks/results/<device>/tuning.json``;
``python -m xlmrxl_kernels.tuning merge benchmarks/results/<device>/tuning.json`` then rewrites this file with the
choices measured there (one entry per device name). Empty until the first GPU run: every cold start measures.
"""

from __future__ import annotations

TUNED_DEFAULTS: dict[str, dict[str, str]] = {}
