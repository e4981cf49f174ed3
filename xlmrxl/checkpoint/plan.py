"""The load plan: which stored tensor feeds each model tensor, and materialising the model from it, module by module.

Key fixes, as transformers does them: old persistent ``embeddings.position_ids`` / ``token_type_ids`` buffers are
dropped; any present member of a tied group feeds the whole group; a task checkpoint loads into the base model (the
``roberta.`` prefix is stripped, head keys become *unexpected*) and a base checkpoint into a task model (the prefix is
added); pre-2020 LayerNorm names (``gamma`` / ``beta``) are renamed. A shape mismatch is an error naming the key and
both shapes (unless ``ignore_mismatched_sizes``); a stored integer or bool tensor where the model holds a floating
one (or the reverse) is an error naming the key: it is never cast silently.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .files import Checkpoint
from .formats import Entry

# old persistent buffers of the embeddings, no longer part of the model: dropped without a word
_LEGACY_BUFFERS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


def tensor_slots(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, bool, torch.Tensor]]:
    """Every checkpoint-visible tensor slot, aliases included: (full name, module, attr, is_param, tensor)."""
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, p in module._parameters.items():
            if p is not None:
                yield prefix + attr, module, attr, True, p
        for attr, b in module._buffers.items():
            if b is not None and attr not in module._non_persistent_buffers_set:
                yield prefix + attr, module, attr, False, b


def alias_names(model: nn.Module) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or ()
    return set(tied.keys()) if isinstance(tied, dict) else set(tied)


def _rename_checkpoint_keys(model: nn.Module, ckpt_keys: list[str], expected: set) -> dict[str, str]:
    """Checkpoint key -> model key (or itself when unmatched): legacy buffers dropped, base-model prefix moved."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_prefix = bool(prefix) and any(k.startswith(prefix + ".") for k in ckpt_keys)
    expects_prefix = bool(prefix) and hasattr(model, prefix) and isinstance(getattr(model, prefix), nn.Module)
    mapping = {}
    for key in ckpt_keys:
        new = key
        if has_prefix and not expects_prefix and key.startswith(prefix + "."):
            new = key[len(prefix) + 1 :]  # task checkpoint into the base model
        elif expects_prefix and not has_prefix:
            new = f"{prefix}.{key}"  # base checkpoint into a task model
        if new not in expected:
            for old, repl in ((".gamma", ".weight"), (".beta", ".bias")):  # pre-2020 LayerNorm names
                if new.endswith(old) and new[: -len(old)] + repl in expected:
                    new = new[: -len(old)] + repl
        if new not in expected and _LEGACY_BUFFERS.search(new):
            continue
        mapping[key] = new
    return mapping


class Plan:
    """Which checkpoint key feeds each unique model tensor, and what is missing / unexpected / mismatched."""

    def __init__(self, model: nn.Module, ckpt: Checkpoint, ignore_mismatched_sizes: bool):
        slots = list(tensor_slots(model))
        self.groups: dict[int, list] = OrderedDict()  # id(tensor) -> [(name, module, attr, is_param)]
        self.meta: dict[int, torch.Tensor] = {}
        for name, module, attr, is_param, t in slots:
            self.groups.setdefault(id(t), []).append((name, module, attr, is_param))
            self.meta[id(t)] = t
        expected = {s[0] for s in slots}
        mapping = _rename_checkpoint_keys(model, list(ckpt.entries), expected)
        by_model_key = {}
        for ck, mk in mapping.items():
            by_model_key.setdefault(mk, ck)
        aliases = alias_names(model)
        preferred = set(getattr(model, "_load_preferred_keys", ()) or ())  # transformers' winner of a tie
        self.source: dict[int, str | None] = {}
        missing, mismatched = [], []
        for tid, members in self.groups.items():
            names = [m[0] for m in members]
            present = [n for n in names if n in by_model_key]
            # prefer the tie's source over its alias, except where transformers keeps the alias (the decoder bias)
            present.sort(key=lambda n: (n not in preferred, n in aliases))
            if not present:
                self.source[tid] = None
                missing.extend(names)
                continue
            ck = by_model_key[present[0]]
            want = tuple(self.meta[tid].shape)
            have = ckpt.entries[ck].shape
            _check_kind(ck, ckpt.entries[ck], self.meta[tid])
            if have != want:
                mismatched.append((present[0], have, want))
                self.source[tid] = None
                continue
            self.source[tid] = ck
        # reported under the name the key got here (as transformers does): a base checkpoint's pooler read into a
        # classifier is "roberta.pooler.dense.weight"
        self.unexpected = sorted(mk for mk in mapping.values() if mk not in expected)
        ignore_missing = getattr(model, "_keys_to_ignore_on_load_missing", None) or ()
        ignore_unexpected = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()
        self.missing = sorted(k for k in missing if not any(re.search(p, k) for p in ignore_missing))
        self.unexpected = [k for k in self.unexpected if not any(re.search(p, k) for p in ignore_unexpected)]
        self.mismatched = mismatched
        if mismatched and not ignore_mismatched_sizes:
            raise CheckpointError(_mismatch_message(mismatched, ckpt.directory))

    def n_tensors(self) -> int:
        return sum(1 for s in self.source.values() if s is not None)


def _check_kind(key: str, entry: Entry, target: torch.Tensor) -> None:
    """A floating model tensor must come from a floating stored tensor, an integer / bool one from a non-floating
    one: casting int32 codes into float weights (or floats into int4 codes) would load silently wrong numbers."""
    if entry.dtype.is_floating_point != target.dtype.is_floating_point:
        what = "a floating" if target.dtype.is_floating_point else "an integer"
        raise CheckpointError(
            f"{entry.file.path}: tensor {key!r} is stored as {str(entry.dtype).replace('torch.', '')}, but the "
            f"model holds {what} tensor there ({str(target.dtype).replace('torch.', '')}); the checkpoint is "
            "corrupted, crafted or of another model: it is not cast"
        )


def _mismatch_message(mismatched, directory) -> str:
    lines = [f"size mismatch between the checkpoint in {directory!r} and the model:"]
    for key, have, want in mismatched[:10]:
        lines.append(f"  {key}: checkpoint shape {tuple(have)}, model shape {tuple(want)}")
    if len(mismatched) > 10:
        lines.append(f"  ... and {len(mismatched) - 10} more")
    hints = []
    head = [(k, h) for k, h, _ in mismatched if re.search(r"(classifier|qa_outputs|out_proj)", k) and h]
    if head:
        hints.append(
            f"a head with a different number of labels: pass num_labels={head[0][1][0]} to match the "
            "checkpoint, or ignore_mismatched_sizes=True to start that head afresh"
        )
    if len(head) < len(mismatched):
        hints.append(
            "a wrong model size or config (e.g. an XL config, hidden 2560, for an XXL checkpoint, hidden "
            "4096): load the config.json that came with these weights and drop size overrides"
        )
    return "\n".join(lines) + "\nThis usually means " + "; or ".join(hints) + "."


def materialise(
    model: nn.Module, plan: Plan, ckpt: Checkpoint, device: torch.device, hook: Callable | None, bar: Any
) -> None:
    """Per module: allocate its own tensors on ``device`` (dtype as declared), initialise the missing ones with
    ``model._init_weights``, read the stored ones from the file, then run the quantization hook."""
    done: dict[int, torch.Tensor] = {}  # id(meta tensor) -> its materialised tensor (shared by all aliases)
    init = getattr(model, "_init_weights", None)
    for mod_name, module in list(model.named_modules()):
        own = [t for t in list(module._parameters.values()) + list(module._buffers.values()) if t is not None]
        fresh = [id(t) for t in own if id(t) in plan.groups and id(t) not in done]
        if fresh:
            for tid in fresh:
                meta = plan.meta[tid]
                new = torch.empty(meta.shape, dtype=meta.dtype, device=device)
                if isinstance(meta, nn.Parameter):
                    new = nn.Parameter(new, requires_grad=meta.requires_grad)
                for _, owner, attr, is_param in plan.groups[tid]:
                    (owner._parameters if is_param else owner._buffers)[attr] = new
                done[tid] = new
            needs_init = any(plan.source[tid] is None for tid in fresh)
            with torch.no_grad():
                if needs_init:
                    if init is None:
                        raise RuntimeError(
                            f"{type(model).__name__} has no _init_weights to initialise the missing "
                            f"tensors of {mod_name or 'the root module'}"
                        )
                    init(module)
                    # init covers the whole module, tensors loaded earlier through a tie included: read all again
                    reload = [tid for tid, t in done.items() if tid not in fresh and any(t is x for x in own)]
                else:
                    reload = []
                for tid in fresh + reload:
                    key = plan.source[tid]
                    if key is not None:
                        ckpt.read_into(key, done[tid].data)
                        if bar is not None and tid in fresh:
                            bar.update(1)
        if hook is not None:
            replacement = hook(mod_name, module)
            if replacement is not None and replacement is not module:
                parent_name, _, child = mod_name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
                for tid in fresh:  # drop our reference to the replaced tensors (quantize-while-loading frees them)
                    if len(plan.groups[tid]) == 1:
                        done[tid] = None
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(
            f"{type(model).__name__} still has tensors on the meta device after loading: "
            f"{', '.join(leftover[:5])}{' ...' if len(leftover) > 5 else ''}. Non-persistent buffers "
            "cannot come from a checkpoint; the model class must not create them on the meta device"
        )


class NoRandomInitOnMeta(torch.overrides.TorchFunctionMode):
    """Random in-place init (``normal_``, ``uniform_``, ...) on meta tensors becomes a no-op while the model is
    built: it computes nothing there anyway, but the first meta ``normal_`` imports torch's decompositions
    (seconds). Everything else runs unchanged."""

    _OPS = {
        getattr(torch.Tensor, n)
        for n in (
            "normal_",
            "uniform_",
            "bernoulli_",
            "exponential_",
            "random_",
            "log_normal_",
            "cauchy_",
            "geometric_",
        )
        if hasattr(torch.Tensor, n)
    }
    _OPS |= {
        getattr(nn.init, n)
        for n in (
            "normal_",
            "uniform_",
            "trunc_normal_",
            "kaiming_uniform_",
            "kaiming_normal_",
            "xavier_uniform_",
            "xavier_normal_",
            "orthogonal_",
            "sparse_",
        )
        if hasattr(nn.init, n)
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._OPS:
            t = args[0] if args else kwargs.get("tensor", kwargs.get("self"))  # nn.init passes tensor=
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)
