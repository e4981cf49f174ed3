"""The tokenizer's output type, ``BatchEncoding`` (a dict with attribute access and ``.to(device)``), and building
it from the encoded rows."""

from __future__ import annotations

from typing import Any

import torch


class BatchEncoding(dict):
    """The tokenizer's output: a dict (``enc["input_ids"]``) that also offers attribute access
    (``enc.input_ids``), ``.to(device)`` for tensors, and ``model(**enc)``."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {', '.join(self.keys())}") from None

    def to(self, device) -> BatchEncoding:
        """Move every tensor to ``device`` (in place; returns self, like transformers)."""
        for k, v in self.items():
            if hasattr(v, "to"):
                self[k] = v.to(device)
        return self

    def __getstate__(self):
        return dict(self)

    def __setstate__(self, state):
        self.update(state)


def collate(padded: list[dict[str, Any]], want_mask: bool, return_tensors: str | None, batched: bool) -> BatchEncoding:
    """The encoded rows as one ``BatchEncoding``: lists of rows for a batch, one row's lists for a single input, or
    ``(batch, length)`` long tensors with ``return_tensors='pt'`` (the rows must then have one length)."""
    keys = list(padded[0].keys()) if padded else ["input_ids"] + (["attention_mask"] if want_mask else [])
    if return_tensors == "pt":
        lengths = {len(e["input_ids"]) for e in padded}
        if len(lengths) > 1:
            raise ValueError(
                f"cannot make one tensor from sequences of lengths {sorted(lengths)}; pass "
                "padding=True (and truncation=True for overlong inputs) with return_tensors='pt'"
            )
        data = {k: torch.tensor([e[k] for e in padded], dtype=torch.long) for k in keys}
    elif batched:
        data = {k: [e[k] for e in padded] for k in keys}
    else:
        data = dict(padded[0])
    return BatchEncoding(data)
