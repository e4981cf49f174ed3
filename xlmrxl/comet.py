"""COMET helpers where a COMET user looks for them: ``xlmrxl.comet.load(path, dtype=..., device=...)``.

comet (unbabel-comet) is an optional extra; it is imported only when ``load`` runs.
"""

from __future__ import annotations

from .clients.comet_load import load

__all__ = ["load"]
