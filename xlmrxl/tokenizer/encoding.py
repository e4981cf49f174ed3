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

    def set_sequence_ids(self, rows: list[list[int | None]]) -> None:
        """Record which sequence each token of each row comes from (the tokenizer does)."""
        self.__dict__["_sequence_ids"] = rows

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """As transformers' fast ``BatchEncoding.sequence_ids``: per token of row ``batch_index``, 0 for the text,
        1 for the pair, None for special and padding tokens (what question answering needs with overflow)."""
        rows = self.__dict__.get("_sequence_ids")
        if rows is None:
            raise ValueError(
                "sequence_ids() is known only on the tokenizer's own output (not after pad() or a copy); "
                "call the tokenizer again"
            )
        if not -len(rows) <= batch_index < len(rows):
            raise IndexError(f"batch_index={batch_index} is out of range for {len(rows)} row(s)")
        return list(rows[batch_index])

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


def as_tensor(rows: Any, return_tensors: str, key: str = "input_ids"):
    """``rows`` (a list, or a list of equal-length lists) as a long tensor ('pt') or int64 array ('np')."""
    lengths = {len(r) for r in rows if isinstance(r, (list, tuple))}
    if len(lengths) > 1:
        raise ValueError(
            f"cannot make one tensor of {key!r} from sequences of lengths {sorted(lengths)}; pass "
            f"padding=True (and truncation=True for overlong inputs) with return_tensors={return_tensors!r}"
        )
    if return_tensors == "np":
        import numpy as np

        return np.asarray(rows, dtype=np.int64)
    return torch.tensor(rows, dtype=torch.long)


def convert(enc: BatchEncoding, return_tensors: str | None) -> BatchEncoding:
    """``enc`` with every field made a tensor / array (batched fields; in place); unchanged for None."""
    if return_tensors is not None:
        for k, v in enc.items():
            enc[k] = as_tensor(v, return_tensors, k)
    return enc


def collate(padded: list[dict[str, Any]], want_mask: bool, return_tensors: str | None, batched: bool) -> BatchEncoding:
    """The encoded rows as one ``BatchEncoding``: lists of rows for a batch, one row's lists for a single input, or
    ``(batch, length)`` long tensors / int64 arrays with ``return_tensors='pt'`` / ``'np'`` (the rows must then
    have one length)."""
    keys = list(padded[0].keys()) if padded else ["input_ids"] + (["attention_mask"] if want_mask else [])
    if return_tensors is not None:
        return convert(BatchEncoding({k: [e[k] for e in padded] for k in keys}), return_tensors)
    if batched:
        return BatchEncoding({k: [e[k] for e in padded] for k in keys})
    return BatchEncoding(dict(padded[0]))
