"""Model output containers, behaving like transformers' ``ModelOutput`` (4.56.2).

An output is a dataclass and an ordered dict at once: ``out.logits``, ``out["logits"]``, ``out[0]``, ``out.to_tuple()``,
``"logits" in out``, ``out.keys()``. Fields that are ``None`` are not keys and are skipped by integer indexing and
``to_tuple()``. Field names and order are transformers' own, so code written against transformers reads ours unchanged.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, NoReturn

import torch
import torch.utils._pytree as pytree


class ModelOutput(OrderedDict):
    """Base class: subclasses are ``@dataclass`` with every field defaulting to ``None``. Each subclass is a pytree
    node (as transformers registers its outputs), so ``torch.export`` and ``torch.compile`` can return it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        pytree.register_pytree_node(
            cls,
            _flatten,
            functools.partial(_unflatten, cls),
            serialized_type_name=f"{cls.__module__}.{cls.__name__}",
        )

    def __post_init__(self) -> None:
        # The dataclass __init__ sets attributes through __setattr__ below, which also fills the dict.
        # Re-sync in field order in case a subclass assigned attributes directly.
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name not in self:
                OrderedDict.__setitem__(self, f.name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if value is not None or name in self.keys():
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        OrderedDict.__setitem__(self, key, value)
        object.__setattr__(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __delitem__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} does not support item deletion")

    def setdefault(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} does not support setdefault")

    def pop(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} does not support pop")

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} does not support update")

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields, in field order."""
        return tuple(OrderedDict.__getitem__(self, k) for k in self.keys())

    def __reduce__(self) -> tuple:
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        return (_rebuild, (type(self), state))


def _rebuild(cls: type, state: Any) -> ModelOutput:
    return cls(**state)


def _flatten(output: ModelOutput) -> tuple[list[Any], list[str]]:
    return list(output.values()), list(output.keys())


def _unflatten(cls: type, values: list[Any], keys: list[str]) -> ModelOutput:
    return cls(**dict(zip(keys, values)))


@dataclass(eq=False)
class BaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Any | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    past_key_values: Any | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class MultipleChoiceModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


__all__ = [
    "ModelOutput",
    "BaseModelOutputWithPastAndCrossAttentions",
    "BaseModelOutputWithPoolingAndCrossAttentions",
    "CausalLMOutputWithCrossAttentions",
    "MaskedLMOutput",
    "SequenceClassifierOutput",
    "MultipleChoiceModelOutput",
    "TokenClassifierOutput",
    "QuestionAnsweringModelOutput",
]


_PACKED = "_xlmrxl_packed_mask"


def set_packed_mask(output: ModelOutput, mask: torch.Tensor | None) -> ModelOutput:
    """Note on ``output`` (not a field: keys, tuples and pytrees are unchanged) that the fused packed path computed it,
    with ``mask`` (2D keep mask; None: every position real). Positions where the mask is 0 hold zeros."""
    object.__setattr__(output, _PACKED, (mask,))
    return output


def packed_mask(output: ModelOutput) -> tuple[torch.Tensor | None] | None:
    """``(mask,)`` if the packed path computed ``output`` (see ``set_packed_mask``), else None (the exact path)."""
    return output.__dict__.get(_PACKED)


def real_rows(module: Any, hidden: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``module(hidden)`` computed on the rows where ``keep`` (B, S) is true only, scattered back into a (B, S, ...)
    tensor with zeros at padded positions (the packed path's rule for hidden states, kept for logits): the MLM
    head's vocabulary-wide projection is not spent on padding."""
    if keep is None or keep.shape != hidden.shape[:2]:
        return module(hidden)
    keep = keep.bool()
    rows = module(hidden[keep])
    out = rows.new_zeros(*keep.shape, *rows.shape[1:])
    out[keep] = rows
    return out
