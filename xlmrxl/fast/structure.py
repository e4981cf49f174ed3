"""What the fused path needs of the modules (layout, LayerNorms, exact GELU, int4 layers), and per-layer plans.

Works on any module laid out like transformers' ``XLMRobertaXLEncoder`` (ours or transformers' 4.56.x / 5.x). The
check and the plans are cached on the encoder, keyed on the identity of every module and weight they use, so a module
swapped since (``quantize``, ``prune_heads``) is seen.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..reasons import STRUCTURE, Reason


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
    key = _fingerprint(encoder)
    cached = encoder.__dict__.get("_xlmrxl_structure")
    if key is not None and cached is not None and cached[0] == key:
        return [], cached[1]
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
        encoder.__dict__["_xlmrxl_structure"] = (key, modules)
    return reasons, modules


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


def is_int4(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("qweight", "scales", "zeros", "group_size"))


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
    """The modules one layer runs with, looked up once per structure (not per forward)."""

    __slots__ = ("sa", "ln_attn", "ln_ffn", "o", "up", "down", "heads", "scale", "o_int4", "up_int4", "down_int4")

    def __init__(self, layer: nn.Module) -> None:
        attn = layer.attention
        self.sa = attn.self
        self.ln_attn, self.ln_ffn = attn.self_attn_layer_norm, layer.LayerNorm
        self.o, self.up, self.down = attn.output.dense, layer.intermediate.dense, layer.output.dense
        self.o_int4, self.up_int4, self.down_int4 = is_int4(self.o), is_int4(self.up), is_int4(self.down)
        self.heads = _num_heads(self.sa)
        self.scale = getattr(self.sa, "scaling", None)


def layer_plans(encoder: nn.Module) -> list[LayerPlan]:
    """Per-layer plans, cached with the structure check (refreshed whenever the route sees a module or
    weight replaced)."""
    cached = encoder.__dict__.get("_xlmrxl_plans")
    st = encoder.__dict__.get("_xlmrxl_structure")
    if cached is not None and st is not None and cached[0] is st:
        return cached[1]
    plans = [LayerPlan(layer) for layer in encoder.layer]
    if st is not None:
        encoder.__dict__["_xlmrxl_plans"] = (st, plans)
    return plans
