"""transformers interop: patch its models in place (``patch``), convert between its classes and ours (``convert``)."""

from __future__ import annotations

from .convert import from_transformers, to_transformers
from .patch import accelerate, deaccelerate, is_accelerated

__all__ = ["accelerate", "deaccelerate", "is_accelerated", "from_transformers", "to_transformers"]
