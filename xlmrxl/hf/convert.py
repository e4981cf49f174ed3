"""Conversions between transformers' XLM-RoBERTa-XL classes and xlmrxl's, sharing the parameter objects (no copy).

- ``from_transformers(hf_model, backend="auto")`` builds xlmrxl's model of the same class **sharing** the parameter
  objects; ``to_transformers(model)`` builds transformers' model of the same class sharing ours.
  transformers is imported only by the functions that need it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import modeling
from ..backend import Backend
from ..config import XLMRobertaXLConfig
from ..fast.structure import is_int4

__all__ = ["from_transformers", "to_transformers"]


def _share_into(src: nn.Module, dst: nn.Module) -> list:
    """Make ``dst`` use ``src``'s parameter (and buffer) objects by name; int4 modules are shared whole.
    Returns the names of ``dst``'s buffers still on the meta device (``src`` has no such buffer)."""
    for name, mod in list(src.named_modules()):
        if name and is_int4(mod):
            parent, _, leaf = name.rpartition(".")
            try:
                holder = dst.get_submodule(parent) if parent else dst
            except AttributeError:
                continue
            if hasattr(holder, leaf):
                setattr(holder, leaf, mod)
    src_params = dict(src.named_parameters(remove_duplicate=False))
    src_bufs = dict(src.named_buffers(remove_duplicate=False))
    missing, meta_buffers, mismatched = [], [], []
    for name, p in list(dst.named_parameters(remove_duplicate=False)):
        parent, _, leaf = name.rpartition(".")
        holder = dst.get_submodule(parent) if parent else dst
        if name not in src_params:
            missing.append(name)
        elif src_params[name].shape != p.shape:
            mismatched.append(f"{name} {tuple(src_params[name].shape)} vs {tuple(p.shape)}")
        else:
            holder._parameters[leaf] = src_params[name]
    if mismatched:
        raise ValueError(
            f"cannot share weights between {type(src).__name__} and {type(dst).__name__}: shapes differ "
            f"(source vs target) for {mismatched[:4]}{'...' if len(mismatched) > 4 else ''}; were heads "
            "pruned or the config edited after loading?"
        )
    for name, buf in list(dst.named_buffers(remove_duplicate=False)):
        parent, _, leaf = name.rpartition(".")
        holder = dst.get_submodule(parent) if parent else dst
        if name in src_bufs:
            holder._buffers[leaf] = src_bufs[name]
        elif buf.is_meta:
            meta_buffers.append(name)
    extra = sorted(set(src_params) - {n for n, _ in dst.named_parameters(remove_duplicate=False)})
    if missing or extra:
        raise ValueError(
            f"cannot share weights between {type(src).__name__} and {type(dst).__name__}: "
            f"missing in the source {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"not in the target {extra[:8]}{'...' if len(extra) > 8 else ''}"
        )
    return meta_buffers


def _model_kwargs(model: nn.Module) -> dict:
    if type(model).__name__ == "XLMRobertaXLModel":
        return {"add_pooling_layer": getattr(model, "pooler", None) is not None}
    return {}


def from_transformers(hf_model: nn.Module, backend: Backend | str | None = "auto") -> nn.Module:
    """xlmrxl's model of the same class as ``hf_model`` (transformers), sharing its parameter objects."""
    name = type(hf_model).__name__
    cls = getattr(modeling, name, None)
    if cls is None or not isinstance(cls, type):
        raise TypeError(f"from_transformers() takes a transformers XLM-RoBERTa-XL model; there is no xlmrxl.{name}")
    cfg = XLMRobertaXLConfig.from_dict(hf_model.config.to_dict())
    with torch.device("meta"):
        ours = cls(cfg, **_model_kwargs(hf_model))
    left = _share_into(hf_model, ours)
    if left:
        raise ValueError(f"from_transformers: xlmrxl's {name} has buffers {left} that transformers' model lacks")
    ours.train(hf_model.training)
    ours.set_backend(backend)
    return ours


def to_transformers(model: nn.Module) -> nn.Module:
    """transformers' model of the same class as ``model`` (xlmrxl), sharing its parameter objects."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("to_transformers() needs the transformers package (pip install transformers)") from exc
    name = type(model).__name__
    cls = getattr(transformers, name, None)
    if cls is None:
        raise TypeError(f"transformers {transformers.__version__} has no {name}")
    cfg = transformers.XLMRobertaXLConfig.from_dict(model.config.to_dict())
    with torch.device("meta"):
        hf = cls(cfg, **_model_kwargs(model))
    _share_into(model, hf)
    dev = next(model.parameters()).device
    for bname, buf in list(hf.named_buffers(remove_duplicate=False)):
        if not buf.is_meta:
            continue
        parent, _, leaf = bname.rpartition(".")
        holder = hf.get_submodule(parent) if parent else hf
        if leaf == "position_ids":
            holder._buffers[leaf] = torch.arange(buf.shape[-1], device=dev).expand(buf.shape).contiguous()
        elif leaf == "token_type_ids":
            holder._buffers[leaf] = torch.zeros(buf.shape, dtype=buf.dtype, device=dev)
        else:
            raise ValueError(f"to_transformers: transformers' {name} has a buffer {bname!r} xlmrxl cannot fill")
    hf.train(model.training)
    return hf
