"""Find the XLM-RoBERTa-XL model inside a sentence-transformers ``SentenceTransformer`` or ``CrossEncoder``.

``SentenceTransformer``: the ``Transformer`` module's ``auto_model`` (``st[0].auto_model``), an
``XLMRobertaXLModel``; ``CrossEncoder``: ``ce.model``, an ``XLMRobertaXLForSequenceClassification``. Both are found
by walking the client's submodules (outermost first), which holds across sentence-transformers 3.x to 6.x. A client
built on another transformers model (BERT) gives an unsupported ``Client``: ``accelerate`` warns and returns it
unchanged, as it does for a bare ``BertModel``. Pooling,
normalisation, activation and batching stay sentence-transformers' own code; only the encoder forward is replaced.
sentence-transformers is an optional extra: it is never imported here.
"""

from __future__ import annotations

import torch.nn as nn

from .base import Client, describe, is_xlmrxl_model

__all__ = ["find_encoder"]


def find_encoder(obj: object) -> Client:
    """The ``Client`` of a SentenceTransformer / CrossEncoder (or any sentence-transformers module holding one)."""
    if not isinstance(obj, nn.Module):
        raise TypeError(f"xlmrxl cannot accelerate {describe(obj)}: it holds no torch module")
    found = []
    for _, m in obj.named_modules():
        if is_xlmrxl_model(m):
            return Client(kind=f"{type(obj).__name__} ({type(m).__name__})", model=m)
        if hasattr(m, "base_model_prefix") and hasattr(m, "config"):  # some other transformers model
            found.append(m)
    if found:  # e.g. BERT: not ours to accelerate; accelerate() warns and returns the client unchanged
        return Client(kind=f"{type(obj).__name__} ({type(found[0]).__name__})", model=found[0], supported=False)
    raise TypeError(
        f"xlmrxl accelerates XLM-RoBERTa-XL / XXL encoders; the {describe(obj)} given holds no transformers "
        "model. Load it from an XLM-RoBERTa-XL checkpoint (e.g. facebook/xlm-roberta-xl) to accelerate it."
    )
