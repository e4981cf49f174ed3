"""Find the XLM-RoBERTa-XL encoder inside the clients built on transformers: COMET metrics, sentence-transformers.

``xlmrxl.accelerate(obj)`` / ``deaccelerate(obj)`` call ``find_encoder(obj)`` first:

- None: ``obj`` is not a client this package knows (a transformers or xlmrxl model goes on as before);
- a ``Client``: ``client.model`` is the transformers XLM-RoBERTa-XL model to accelerate in place, then
  ``client.attach(backend)`` adds what the client needs on top (COMET: the packed layer mix), and
  ``client.detach()`` undoes it;
- a ``Client`` with ``supported=False`` when the client is built on another transformers model (BERT, XLM-R):
  ``accelerate`` warns and returns it unchanged, as for a bare ``BertModel``;
- ``TypeError`` naming what was found, when ``obj`` is such a client but holds no transformers model at all.

A client is recognised by the modules its class comes from, so neither ``comet`` nor ``sentence_transformers`` (both
optional extras, never needed to import xlmrxl) is imported here.
"""

from __future__ import annotations

from . import comet, sentence_transformers
from .base import Client, describe

__all__ = ["Client", "find_encoder", "describe"]


def find_encoder(obj: object) -> Client | None:
    """The ``Client`` wrapping ``obj``'s XLM-RoBERTa-XL encoder, or None when ``obj`` is no known client."""
    modules = {c.__module__.split(".")[0] for c in type(obj).__mro__}
    if "comet" in modules:
        return comet.find_encoder(obj)
    if "sentence_transformers" in modules:
        return sentence_transformers.find_encoder(obj)
    return None
