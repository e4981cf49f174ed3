"""What the fused path needs of the modules (layout, LayerNorms, exact GELU, int4 layers), and per-layer plans.

Works on any module laid out like transformers' ``XLMRobertaXLEncoder`` (ours or transformers' 4.56.x / 5.x). The
check and the plans are cached on the encoder, keyed on the identity of every module and weight they use, so a module
swapped since (``quantize``, ``prune_heads``) is seen. The key is recomputed only when ``version()`` moved: a counter
bumped by torch's global module / parameter / buffer registration hooks (any ``setattr`` of a module, parameter or
buffer anywhere), so the per-call check is O(1); an attribute that is none of those (a plain-function activation
assigned over ``intermediate_act_fn``) is seen after ``structure_changed()``.

The per-layer plans (``layer_plans``) hold the tensors each layer runs with (LayerNorm weights, the fused q/k/v
weight, the projections' weights), so a forward reads no ``nn.Module`` attribute; they are re-validated once per
forward by comparing the data pointers of the encoder's parameters and buffers (one C-level pass), which catches
``model.to()`` / ``half()`` (same Parameter objects, new storages).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..reasons import STRUCTURE, Reason
from .qkv import fused_qkv_module, is_int4

__all__ = ["structure_not_supported", "layer_plans", "LayerPlan", "Plans", "is_int4", "version", "structure_changed"]

_VERSION = [0]
VERSION = _VERSION  # (read by the callers' cached-answer checks: route, the packed stack)
_DATA_PTR = torch.Tensor.data_ptr


def _bump(*_args: object) -> None:
    _VERSION[0] += 1


# any module / parameter / buffer assignment anywhere bumps the version (the hooks return None: nothing is replaced)
nn.modules.module.register_module_module_registration_hook(_bump)
nn.modules.module.register_module_parameter_registration_hook(_bump)
nn.modules.module.register_module_buffer_registration_hook(_bump)


def version() -> int:
    """The structure version: moves whenever a module, parameter or buffer is assigned anywhere."""
    return _VERSION[0]


def structure_changed() -> None:
    """Tell the cached checks and plans that something they cannot see changed (e.g. a plain-function
    ``intermediate_act_fn`` assigned over the activation)."""
    _VERSION[0] += 1


def _fingerprint(encoder: nn.Module) -> tuple | None:
    """Identity of every module and weight the structural checks look at (dict reads only: this runs per call)."""
    try:
        fp = [id(encoder._modules["LayerNorm"])]
        add = fp.append
        for layer in encoder._modules["layer"]._modules.values():
            lm = layer._modules
            am = lm["attention"]._modules
            sm = am["self"]._modules
            inter = lm["intermediate"]
            for m in (
                sm["query"],
                sm["key"],
                sm["value"],
                am["output"]._modules["dense"],
                inter._modules["dense"],
                lm["output"]._modules["dense"],
            ):
                add(id(m))
                add(id(m._parameters.get("weight", None) if "weight" in m._parameters else m._buffers.get("qweight")))
            add(id(am["self_attn_layer_norm"]))
            add(id(lm["LayerNorm"]))
            add(id(inter._modules.get("intermediate_act_fn") or inter.__dict__.get("intermediate_act_fn")))
        return tuple(fp)
    except (KeyError, AttributeError, TypeError):
        return None


def structure_not_supported(encoder: nn.Module) -> tuple[list[Reason], list[nn.Module]]:
    """(why the fused layer cannot run these modules, the flat module list), cached on the encoder while every checked
    module and weight stays the same object. Empty reasons: the structure is fine."""
    cached = encoder.__dict__.get("_xlmrxl_structure")
    if cached is not None and cached.version == _VERSION[0]:
        return [], cached.modules
    key = _fingerprint(encoder)
    if key is not None and cached is not None and cached.key == key:
        cached.version = _VERSION[0]  # something was assigned somewhere, but not here
        return [], cached.modules
    reasons = []
    layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0:
        reasons.append(
            Reason(STRUCTURE, f"{type(encoder).__name__} has no .layer list laid out like XLMRobertaXLEncoder")
        )
    else:
        for i, layer in enumerate(layers):
            r = _layer_not_supported(layer)
            if r is not None:
                reasons.append(Reason(STRUCTURE, f"layer {i}: {r}"))
                break
    if not isinstance(getattr(encoder, "LayerNorm", None), nn.LayerNorm):
        reasons.append(Reason(STRUCTURE, "the encoder has no final LayerNorm (encoder.LayerNorm)"))
    modules = list(encoder.modules())
    if key is not None and not reasons:  # only a pass is cached (a meta weight can be filled in place later)
        encoder.__dict__["_xlmrxl_structure"] = Structure(key, modules)
    return reasons, modules


class Structure:
    """A passed structure check: its fingerprint, the version it was taken at, the flat module list, and what the
    per-call checks scan at C speed (every module's forward-hook dicts and ``__dict__``)."""

    __slots__ = ("key", "version", "modules", "hook_dicts", "dicts", "params")

    def __init__(self, key: tuple, modules: list[nn.Module]) -> None:
        self.key, self.version, self.modules = key, _VERSION[0], modules
        self.hook_dicts = [d for m in modules[1:] for d in (m._forward_hooks, m._forward_pre_hooks)]
        self.dicts = [m.__dict__ for m in modules]
        self.params: list[torch.Tensor] = []


def _layer_not_supported(layer: nn.Module) -> str | None:
    try:
        attn = layer.attention
        sa = attn.self
        mods = dict(
            q=sa.query, k=sa.key, v=sa.value, o=attn.output.dense, up=layer.intermediate.dense, down=layer.output.dense
        )
        lns = dict(attn_ln=attn.self_attn_layer_norm, ffn_ln=layer.LayerNorm)
    except AttributeError as exc:
        return f"not laid out like XLMRobertaXLLayer ({exc})"
    pe = getattr(sa, "position_embedding_type", "absolute") or "absolute"
    if pe != "absolute":
        return f"position_embedding_type={pe!r} (relative positions are not fused)"
    for name, ln in lns.items():
        if not isinstance(ln, nn.LayerNorm) or ln.weight is None or len(ln.normalized_shape) != 1:
            return f"{name} is not an affine 1-D nn.LayerNorm"
    for name, m in mods.items():
        if not (isinstance(m, nn.Linear) or is_int4(m)):
            return f"{name} is a {type(m).__name__}, neither nn.Linear nor an int4 QuantLinear"
        w = _weight_of(m)
        if w.is_meta:
            return f"{name} weights are on the meta device (not loaded yet)"
    if not _is_exact_gelu(layer.intermediate):
        return "the FFN activation is not exact (erf) GELU"
    heads = _num_heads(sa)
    if heads is None or _out_features(mods["q"]) % heads:
        return "cannot tell the number of attention heads"
    if not (_out_features(mods["q"]) == _out_features(mods["k"]) == _out_features(mods["v"])):
        return "q, k and v have different widths"
    return None


def _weight_of(m: nn.Module) -> torch.Tensor:
    return m.qweight if is_int4(m) else m.weight


def _out_features(m: nn.Module) -> int:
    return int(getattr(m, "out_features", None) or _weight_of(m).shape[0])


def _num_heads(sa: nn.Module) -> int | None:
    n = getattr(sa, "num_attention_heads", None)
    if n is None:
        cfg = getattr(sa, "config", None)
        n = getattr(cfg, "num_attention_heads", None)
    return int(n) if n else None


def _is_exact_gelu(intermediate) -> bool:
    act = getattr(intermediate, "intermediate_act_fn", None)
    if act is None:
        act = getattr(intermediate, "act_fn", None)
    if act is None:
        return False
    if act is F.gelu:
        return True
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    name = type(act).__name__
    if name == "GELUActivation":  # transformers: self.act is F.gelu, or its own exact erf formula
        inner = getattr(act, "act", None)
        return inner is F.gelu or getattr(inner, "__name__", "") == "_gelu_python"
    return bool(getattr(act, "xlmrxl_exact_gelu", False))


class LayerPlan:
    """What one layer runs with, looked up once per structure (not per forward): the LayerNorms as
    ``(weight, bias, eps)``, the q/k/v GEMM as ``qkv_kind`` ("dense": ``qkv = (W, b)`` the fused weight; "int4": the
    concatenated ``QuantLinear``; "split": the three modules), and each projection as ``(weight, bias)`` (dense) or
    its ``QuantLinear`` (``*_int4``)."""

    __slots__ = (
        "ln_attn",
        "ln_ffn",
        "qkv_kind",
        "qkv",
        "o",
        "up",
        "down",
        "heads",
        "width",
        "head_dim",
        "scale",
        "o_int4",
        "up_int4",
        "down_int4",
    )

    def __init__(self, layer: nn.Module) -> None:
        attn = layer.attention
        sa = attn.self
        self.ln_attn, self.ln_ffn = _ln(attn.self_attn_layer_norm), _ln(layer.LayerNorm)
        kind, *what = fused_qkv_module(sa)
        self.qkv_kind = kind
        self.qkv = tuple(what) if kind == "dense" else what[0] if kind == "int4" else (sa.query, sa.key, sa.value)
        o, up, down = attn.output.dense, layer.intermediate.dense, layer.output.dense
        self.o_int4, self.up_int4, self.down_int4 = is_int4(o), is_int4(up), is_int4(down)
        self.o, self.up, self.down = (m if is_int4(m) else (m.weight, m.bias) for m in (o, up, down))
        self.heads = _num_heads(sa)
        self.width = _out_features(sa.query)
        self.head_dim = self.width // self.heads
        self.scale = getattr(sa, "scaling", None) or self.head_dim**-0.5


def _ln(ln: nn.LayerNorm) -> tuple:
    return (ln.weight, ln.bias, ln.eps)


def final_norm(encoder: nn.Module) -> tuple:
    """The final LayerNorm as ``(weight, bias, eps)``."""
    return _ln(encoder.LayerNorm)


class Plans(list):
    """The per-layer plans of one structure and one set of storages, plus the final LayerNorm (``final``) and a
    ``generation`` that changes whenever they are rebuilt (the CUDA-graph runners' invalidation key)."""

    final: tuple
    generation: object


def layer_plans(encoder: nn.Module) -> Plans:
    """Per-layer plans, cached with the structure check. Rebuilt when anything was assigned since (``version()``: a
    swapped module or Parameter), or when a q/k/v weight's storage moved (``model.to()``, ``half()``): the plans
    hold the fused q/k/v buffer, which is made from those storages; every other tensor a plan holds is the
    Parameter / module itself, which follows its ``.data``. One C-level data-pointer pass over 6 tensors per layer."""
    structure_not_supported(encoder)  # O(1) when nothing was assigned since (packed_stack may run without route)
    st = encoder.__dict__.get("_xlmrxl_structure")
    cached = encoder.__dict__.get("_xlmrxl_plans")
    if (
        cached is not None
        and cached[0] is st
        and cached[1] == _VERSION[0]
        and tuple(map(_DATA_PTR, st.params)) == cached[2]
    ):
        return cached[3]
    plans = Plans(LayerPlan(layer) for layer in encoder.layer)  # (may fuse q/k/v: storages move)
    plans.final = final_norm(encoder)
    plans.generation = object()  # a new identity per rebuild: what the graphs captured so far must not outlive
    if st is not None:
        names = ("query", "key", "value")
        qkv = [m for layer in encoder.layer for m in (layer.attention.self._modules[n] for n in names)]
        st.params = [t for m in qkv for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
        encoder.__dict__["_xlmrxl_plans"] = (st, _VERSION[0], tuple(map(_DATA_PTR, st.params)), plans)
    return plans
