"""int4 weight-only quantization of the model's linear layers (group-wise, torchao's zero-point convention).

    model = quantize(model, group_size=128, include_lm_head=False)          # in place; returns the model
    model = XLMRobertaXLForMaskedLM.from_pretrained(path, quantization="int4", dtype=torch.bfloat16, device="cuda")
    model.save_pretrained(out)   # qweight / scales / zeros in safetensors, quantization_config in config.json
    XLMRobertaXLForMaskedLM.from_pretrained(out, dtype=torch.bfloat16)    # QuantLinear modules, bit for bit

What is quantized: every ``nn.Linear`` inside the encoder layers (attention q / k / v / output, intermediate,
output; cross-attention too in decoders). With ``include_lm_head=True`` also the heads: ``lm_head.dense`` and
``lm_head.decoder`` (which then stops sharing the word embeddings: ``config.tie_word_embeddings`` becomes False),
the pooler, the classification / QA heads. Embeddings and LayerNorms keep their dtype. A chosen layer whose
in_features is not a multiple of the group size is an error naming it.

``QuantLinear`` holds ``qweight`` (uint8 ``(N, K // 2)``), ``scales`` and ``zeros`` (``(K // G, N)``, the model's
dtype) as persistent buffers and ``bias`` as a parameter; the layout and the maths are
``xlmrxl_kernels.reference.int4``'s. Its forward dispatches ``int4_matmul`` through ``xlmrxl.backend.Backend``:
the Triton kernel on CUDA, the PyTorch reference (dequantize, then ``F.linear``) elsewhere, so an int4 model
also runs on CPU.

``config.quantization_config`` = ``{"quant_method": "xlmrxl_int4", "bits": 4, "group_size": G,
"zero_point_domain": "float", "include_lm_head": bool, "modules": [names]}``. Loading a directory whose config
has it rebuilds the ``QuantLinear`` modules on the meta device first (``prepare_quantized_model``), so the loader
fills their buffers straight from the file. ``load_hook`` is the loader's seam for quantize-while-loading: each
linear is quantized right after its full-precision weight arrives and the weight is released, so at most one
full-precision linear is alive at a time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .backend import Backend

logger = logging.getLogger("xlmrxl")

QUANT_METHOD = "xlmrxl_int4"
_ENCODER_LINEAR = re.compile(r"(^|\.)encoder\.layer\.\d+\.")
_HEAD_LINEAR = re.compile(r"(^|\.)(lm_head|pooler|classifier|qa_outputs)(\.|$)")


class QuantLinear(nn.Module):
    """``nn.Linear`` with an int4 group-wise weight: ``y = x @ dequantize(qweight, scales, zeros).T + bias``."""

    uses_backend = True  # the model's set_backend() hands it the model's Backend

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        group_size: int = 128,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        if group_size < 2 or group_size % 2 or in_features % group_size:
            raise ValueError(
                f"QuantLinear: in_features={in_features} must be a multiple of group_size="
                f"{group_size} (an even number); choose a group size that divides it"
            )
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(in_features // group_size, out_features, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.empty(in_features // group_size, out_features, dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.backend: Backend | None = None  # None: Backend() (XLMRXL_BACKEND, else "auto")

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> QuantLinear:
        """Quantize ``linear`` where it lives (its device, its dtype); the bias Parameter is shared, not copied."""
        from xlmrxl_kernels.reference.int4 import quantize_int4_ref

        w = linear.weight
        q = cls(
            linear.in_features, linear.out_features, bias=False, group_size=group_size, dtype=w.dtype, device="meta"
        )
        with torch.no_grad():
            q.qweight, q.scales, q.zeros = quantize_int4_ref(w.detach(), group_size)
        q.bias = linear.bias  # same object: keeps ties such as lm_head.bias <-> lm_head.decoder.bias
        return q

    @classmethod
    def concat(cls, mods: Sequence[QuantLinear], share_storage: bool = False) -> QuantLinear:
        """One QuantLinear computing ``cat([m(x) for m in mods], -1)`` (e.g. fused q/k/v): rows stack along N.

        ``share_storage=True`` then makes each source's ``qweight`` / ``scales`` / ``zeros`` / ``bias`` views of
        the concatenated tensors, so the fused copy costs no memory (the scales / zeros views are column slices:
        strided, which ``int4_matmul`` and the reference accept)."""
        if not mods or len({(m.in_features, m.group_size, m.scales.dtype) for m in mods}) != 1:
            raise ValueError("QuantLinear.concat needs QuantLinears with one in_features, group size and dtype")
        first = mods[0]
        has_bias = any(m.bias is not None for m in mods)
        out = cls(
            first.in_features,
            sum(m.out_features for m in mods),
            bias=False,
            group_size=first.group_size,
            dtype=first.scales.dtype,
            device="meta",
        )
        with torch.no_grad():
            out.qweight = torch.cat([m.qweight for m in mods], dim=0)
            out.scales = torch.cat([m.scales for m in mods], dim=1)
            out.zeros = torch.cat([m.zeros for m in mods], dim=1)
            if has_bias:
                out.bias = nn.Parameter(
                    torch.cat([m.bias if m.bias is not None else m.scales.new_zeros(m.out_features) for m in mods]),
                    requires_grad=False,
                )
            if share_storage:
                off = 0
                for m in mods:
                    n = m.out_features
                    m.qweight = out.qweight[off : off + n]
                    m.scales = out.scales[:, off : off + n]
                    m.zeros = out.zeros[:, off : off + n]
                    if m.bias is not None:
                        m.bias.data = out.bias.data[off : off + n]
                    off += n
        out.backend = first.backend
        return out

    def dequantize(self) -> torch.Tensor:
        """The full-precision weight ``(out_features, in_features)`` this layer computes with."""
        from xlmrxl_kernels.reference.int4 import dequantize_int4_ref

        return dequantize_int4_ref(self.qweight, self.scales, self.zeros, self.group_size)

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        backend = self.backend if self.backend is not None else _default_backend()
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return backend.int4_matmul(
            x, self.qweight, self.scales, self.zeros, group_size=self.group_size, bias=bias, activation=activation
        )

    @property
    def weight(self):
        raise AttributeError(
            f"{type(self).__name__} has no full-precision weight; use .dequantize() (or .qweight / .scales / .zeros)"
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"group_size={self.group_size}, dtype={str(self.scales.dtype).replace('torch.', '')}"
        )


_DEFAULT_BACKEND: list[Backend] = []


def _default_backend() -> Backend:
    if not _DEFAULT_BACKEND:
        _DEFAULT_BACKEND.append(Backend())
    return _DEFAULT_BACKEND[0]


# ---------------------------------------------------------------------------------------------------------------
# which modules
# ---------------------------------------------------------------------------------------------------------------
def _targets(model: nn.Module, include_lm_head: bool) -> list[str]:
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if _ENCODER_LINEAR.search(name) or (include_lm_head and _HEAD_LINEAR.search(name)):
            names.append(name)
    return names


def _check_targets(model: nn.Module, names: Sequence[str], group_size: int) -> None:
    for name in names:
        m = model.get_submodule(name)
        if m.in_features % group_size:
            raise ValueError(
                f"cannot quantize {name}: in_features={m.in_features} is not a multiple of "
                f"group_size={group_size}; choose a group size that divides it"
            )


def _parse(quantization) -> dict:
    """``"int4"`` or a dict ``{"quant_method": "xlmrxl_int4", "bits": 4, "group_size": G, ...}`` -> options."""
    if isinstance(quantization, str):
        if quantization.strip().lower() not in ("int4", QUANT_METHOD):
            raise ValueError(
                f"quantization={quantization!r} is not supported; use 'int4' (group size 128) or "
                f"{{'quant_method': '{QUANT_METHOD}', 'bits': 4, 'group_size': 128}}"
            )
        return {"group_size": 128, "include_lm_head": False}
    if isinstance(quantization, dict):
        method = quantization.get("quant_method", QUANT_METHOD)
        bits = quantization.get("bits", 4)
        if method != QUANT_METHOD or bits != 4:
            raise ValueError(
                f"quantization config {quantization!r}: only quant_method={QUANT_METHOD!r} with bits=4 is supported"
            )
        if quantization.get("zero_point_domain", "float") != "float":
            raise ValueError(f"zero_point_domain={quantization['zero_point_domain']!r}: only 'float' is supported")
        group = quantization.get("group_size", 128)
        if not isinstance(group, int) or group < 2 or group % 2:
            raise ValueError(f"group_size={group!r} must be an even integer (128 is the usual choice)")
        return {
            "group_size": group,
            "include_lm_head": bool(quantization.get("include_lm_head", False)),
            "modules": quantization.get("modules"),
        }
    raise TypeError(f"quantization must be 'int4' or a dict, got {type(quantization).__name__}")


def _record(model: nn.Module, names: Sequence[str], group_size: int, include_lm_head: bool) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    config.quantization_config = {
        "quant_method": QUANT_METHOD,
        "bits": 4,
        "group_size": group_size,
        "zero_point_domain": "float",
        "include_lm_head": include_lm_head,
        "modules": list(names),
    }
    if include_lm_head and any(n.endswith("lm_head.decoder") for n in names):
        config.tie_word_embeddings = False  # the int4 decoder no longer shares the embedding table


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------
def quantize(model: nn.Module, group_size: int = 128, include_lm_head: bool = False) -> nn.Module:
    """Swap the model's linear layers (see the module docstring) for ``QuantLinear``, in place; return the model."""
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("the model is already quantized (it has QuantLinear modules)")
    names = _targets(model, include_lm_head)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no linear layers to quantize (looked for encoder.layer.N.* "
            f"{'and heads ' if include_lm_head else ''}nn.Linear modules)"
        )
    _check_targets(model, names, group_size)
    backend = getattr(model, "backend", None)
    for name in names:
        q = QuantLinear.from_linear(model.get_submodule(name), group_size)
        q.backend = backend
        _replace(model, name, q)
    _record(model, names, group_size, include_lm_head)
    for m in model.modules():
        # the fast path's fused full-precision q/k/v buffer (the old weights were views of it): let it go
        if getattr(m, "_xlmrxl_qkv", None) is not None:
            del m._xlmrxl_qkv
    logger.info("xlmrxl: quantized %d linear layers to int4 (group size %d)", len(names), group_size)
    return model


def prepare_quantized_model(model: nn.Module, quantization_config: dict) -> nn.Module:
    """Swap in empty ``QuantLinear`` modules (on the weights' device, usually meta) for the layers the config
    names, so that a quantized checkpoint's ``qweight`` / ``scales`` / ``zeros`` load straight into them."""
    opts = _parse(quantization_config)
    names = opts.get("modules") or _targets(model, opts["include_lm_head"])
    for name in names:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"quantization_config names module {name!r}, which {type(model).__name__} does not "
                "have (a checkpoint of another model class?)"
            ) from None
        if isinstance(lin, QuantLinear):
            continue
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"quantization_config names {name!r}, a {type(lin).__name__}, not an nn.Linear")
        q = QuantLinear(
            lin.in_features,
            lin.out_features,
            bias=False,
            group_size=opts["group_size"],
            dtype=lin.weight.dtype,
            device=lin.weight.device,
        )
        q.bias = lin.bias  # the same (meta) Parameter: a tie through it survives
        q.backend = getattr(model, "backend", None)
        _replace(model, name, q)
    return model


def load_hook(model: nn.Module, quantization, *, dtype: torch.dtype, device) -> Callable | None:
    """The loader's seam (``xlmrxl.checkpoint``): ``hook(name, module)`` returns a ``QuantLinear`` for each chosen
    ``nn.Linear`` right after its weight is read, and releases the full-precision weight."""
    opts = _parse(quantization)
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        have = getattr(getattr(model, "config", None), "quantization_config", None) or {}
        if have.get("group_size", opts["group_size"]) != opts["group_size"]:
            raise ValueError(
                f"the checkpoint is already int4 with group_size={have.get('group_size')}; it cannot "
                f"be re-quantized with group_size={opts['group_size']} (load it with quantization=None)"
            )
        return None  # an int4 checkpoint: its QuantLinear modules are loaded as stored
    group = opts["group_size"]
    targets = _targets(model, opts["include_lm_head"])
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layers to quantize")
    _check_targets(model, targets, group)
    _record(model, targets, group, opts["include_lm_head"])
    names = set(targets)

    def hook(name: str, module: nn.Module) -> nn.Module | None:
        if name not in names or not isinstance(module, nn.Linear):
            return None
        q = QuantLinear.from_linear(module, group)
        q.backend = getattr(model, "backend", None)
        module.weight = None  # release the full-precision weight now (the loader keeps no other reference)
        return q

    return hook


def quantized_bytes_report(model: nn.Module) -> dict[str, int | float]:
    """Bytes of the int4 linear layers (``qweight`` + ``scales`` + ``zeros``) vs the same weights in bf16."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    qbytes = sum(t.numel() * t.element_size() for m in layers for t in (m.qweight, m.scales, m.zeros))
    bf16 = sum(2 * m.in_features * m.out_features for m in layers)
    return {
        "quantized_linear_layers": len(layers),
        "quantized_linear_bytes": qbytes,
        "quantized_linear_bf16_bytes": bf16,
        "ratio": (qbytes / bf16) if bf16 else 0.0,
    }
