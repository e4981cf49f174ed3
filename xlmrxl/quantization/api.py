"""Model-level int4: which linears, ``quantize()``, the config record, and the loader's seams (prepare / hook / finish).

``quantize(model, group_size, method, calibration, include_lm_head)`` swaps the chosen ``nn.Linear`` modules for
``QuantLinear`` in place: ``rtn`` and ``mse`` one linear at a time (data-free), ``gptq`` layer by layer on the
calibration texts (``gptq.py``; head linears, with ``include_lm_head``, get ``mse``). Every method records the same
``config.quantization_config`` plus ``"method"`` and ``"method_options"``, and loads with the same code.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..progress import LayerBar
from .calibration import encode, find_tokenizer, load_texts
from .gptq import GPTQ_DEFAULTS, gptq_quantize
from .linear import ERRORS_ATTR, QuantLinear
from .params import METHODS, MSE_DEFAULTS
from .report import final_hidden_states, hidden_cosine, weight_errors

logger = logging.getLogger("xlmrxl")

QUANT_METHOD = "xlmrxl_int4"  # the record's "format" (checkpoints before issue 18: its "quant_method")
# Why the record has no "quant_method": transformers (4.56 and 5.x) skips a quant_method it does not know, with a
# warning, and then loads the int4 checkpoint with randomly initialised linear layers. A quantization_config without
# one is refused instead (ValueError: "... has no `quant_method` attribute ..."), before any weight is read.
LOADER_NOTE = (
    "xlmrxl int4 weights (qweight / scales / zeros): load with xlmrxl, e.g. "
    "xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(path); transformers cannot load this format and refuses it"
)
_RECORD_KEYS = frozenset(
    {"format", "quant_method", "loader", "bits", "group_size", "zero_point_domain", "include_lm_head", "method"}
    | {"method_options", "modules"}
)
_ENCODER_LINEAR = re.compile(r"(^|\.)encoder\.layer\.\d+\.")
_HEAD_LINEAR = re.compile(r"(^|\.)(lm_head|pooler|classifier|qa_outputs)(\.|$)")


def _gptq_defaults() -> dict:

    return dict(GPTQ_DEFAULTS)


# ---------------------------------------------------------------------------------------------------------------
# which modules, which options
# ---------------------------------------------------------------------------------------------------------------
def target_linears(model: nn.Module, include_lm_head: bool) -> list[str]:
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if _ENCODER_LINEAR.search(name) or (include_lm_head and _HEAD_LINEAR.search(name)):
            names.append(name)
    return names


def _check_group_size(group_size: Any) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2 or group_size % 2:
        raise ValueError(
            f"group_size={group_size!r} is not supported: it must be an even integer >= 2 that divides the "
            "layers' in_features (128, the default, fits XL and XXL)"
        )


def _checktarget_linears(model: nn.Module, names: Sequence[str], group_size: int) -> None:
    for name in names:
        m = model.get_submodule(name)
        if m.in_features % group_size:
            raise ValueError(
                f"cannot quantize {name}: in_features={m.in_features} is not a multiple of "
                f"group_size={group_size}; choose a group size that divides it"
            )


def _method_options(method: str, options: dict | None) -> dict:
    """``method`` checked, its options completed with the defaults; unknown options are an error naming them."""
    if method not in METHODS:
        raise ValueError(f"quantization method {method!r} is not supported; use one of {', '.join(METHODS)}")
    options = dict(options or {})
    defaults = {"rtn": {}, "mse": dict(MSE_DEFAULTS), "gptq": _gptq_defaults()}[method]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(
            f"method={method!r} takes no option(s) {unknown}"
            + (f"; its options are {sorted(defaults)}" if defaults else " (it has no options)")
        )
    defaults.update(options)
    return defaults


def _parse(quantization) -> dict:
    """``"int4"`` or a dict ``{"quant_method": "xlmrxl_int4", "bits": 4, "group_size": G, ...}`` -> options."""
    if isinstance(quantization, str):
        if quantization.strip().lower() not in ("int4", QUANT_METHOD):
            raise ValueError(
                f"quantization={quantization!r} is not supported; use 'int4' (group size 128) or "
                f"{{'quant_method': '{QUANT_METHOD}', 'bits': 4, 'group_size': 128}}"
            )
        return {"group_size": 128, "include_lm_head": False, "method": None, "method_options": None}
    if isinstance(quantization, dict):
        for key in ("format", "quant_method"):
            if quantization.get(key, QUANT_METHOD) != QUANT_METHOD:
                raise ValueError(
                    f"quantization config {quantization!r}: {key}={quantization[key]!r} is not supported; xlmrxl "
                    f"loads and writes only its own int4 format ({key}={QUANT_METHOD!r}, bits=4)"
                )
        bits = quantization.get("bits", 4)
        if bits != 4 or isinstance(bits, bool):
            raise ValueError(f"quantization config {quantization!r}: bits={bits!r} is not supported; only bits=4 is")
        if quantization.get("zero_point_domain", "float") != "float":
            raise ValueError(f"zero_point_domain={quantization['zero_point_domain']!r}: only 'float' is supported")
        group = quantization.get("group_size", 128)
        if not isinstance(group, int) or isinstance(group, bool) or group < 2 or group % 2:
            raise ValueError(
                f"group_size={group!r} is not supported: it must be an even integer >= 2 that divides the layers' "
                "in_features (128, the default, fits XL and XXL)"
            )
        return {
            "group_size": group,
            "include_lm_head": bool(quantization.get("include_lm_head", False)),
            "modules": quantization.get("modules"),
            "method": quantization.get("method"),
            "method_options": quantization.get("method_options"),
        }
    raise TypeError(f"quantization must be 'int4' or a dict, got {type(quantization).__name__}")


def _record(
    model: nn.Module, names: Sequence[str], group_size: int, include_lm_head: bool, method: str, options: dict
) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    config.quantization_config = {
        "format": QUANT_METHOD,
        "loader": LOADER_NOTE,
        "bits": 4,
        "group_size": group_size,
        "zero_point_domain": "float",
        "include_lm_head": include_lm_head,
        "method": method,
        "method_options": dict(options),
        "modules": list(names),
    }
    if include_lm_head and any(n.endswith("lm_head.decoder") for n in names):
        config.tie_word_embeddings = False  # the int4 decoder no longer shares the embedding table


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _relative_error(q: QuantLinear, weight: torch.Tensor) -> float:
    w = weight.detach().float()
    return float((q.dequantize().float() - w).norm() / w.norm().clamp(min=1e-30))


def _quantize_one(linear: nn.Linear, group_size: int, method: str, options: dict) -> QuantLinear:
    if method == "rtn":
        return QuantLinear.from_linear(linear, group_size)  # (no keyword: the plain call, as before)
    return QuantLinear.from_linear(linear, group_size, method=method, **options)


def _drop_fused_qkv(model: nn.Module) -> None:
    for m in model.modules():
        # the fast path's fused full-precision q/k/v buffer (the old weights were views of it): let it go
        if getattr(m, "_xlmrxl_qkv", None) is not None:
            del m._xlmrxl_qkv


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------
def quantize(
    model: nn.Module,
    group_size: int = 128,
    method: str = "rtn",
    calibration: str | os.PathLike | Sequence[str] | None = None,
    include_lm_head: bool = False,
    *,
    tokenizer: Any = None,
    progress: bool | None = None,
    **method_options: Any,
) -> nn.Module:
    """Swap the model's linear layers (encoder layers; heads too with ``include_lm_head``) for ``QuantLinear``,
    in place; return the model.

    ``method``: ``"rtn"`` (min-max, torchao's; the default), ``"mse"`` (per-group searched scale / zero, data-free;
    options ``grid``, ``max_shrink``, ``refine_steps``) or ``"gptq"`` (needs ``calibration``: a text file, one text
    per line, or a list of strings, tokenized with ``tokenizer`` or the model's own beside its checkpoint; options
    ``percdamp``, ``blocksize``, ``batch_size``, ``seed``, ``max_samples``, ``params``). ``progress``: a bar per
    layer on stderr, every method (None: when stderr is a terminal or ``XLMRXL_PROGRESS=on``; ``xlmrxl.progress``)."""
    if isinstance(method, bool):  # the old positional form quantize(model, group_size, include_lm_head)
        method, include_lm_head = "rtn", method
    _check_group_size(group_size)
    options = _method_options(method, method_options)
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("the model is already quantized (it has QuantLinear modules)")
    names = target_linears(model, include_lm_head)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no linear layers to quantize (looked for encoder.layer.N.* "
            f"{'and heads ' if include_lm_head else ''}nn.Linear modules)"
        )
    _checktarget_linears(model, names, group_size)
    if method == "gptq":
        if calibration is None:
            raise ValueError(
                "method='gptq' needs calibration texts: calibration='texts.txt' (one text per line) or a list of "
                "strings; method='mse' needs none"
            )
        seqs, info = calibration_ids(model, calibration, tokenizer, options["seed"], options["max_samples"])
        options.update(info)
    elif calibration is not None:
        logger.info("xlmrxl: method=%r is data-free; the calibration texts are not used to quantize", method)
    backend = getattr(model, "backend", None)
    errors: dict[str, float] = {}
    rest = list(names)
    if method == "gptq":
        run = {k: options[k] for k in ("percdamp", "blocksize", "batch_size", "params")}
        errors.update(gptq_quantize(model, names, seqs, group_size, progress=progress, **run))
        rest = [n for n in names if n not in errors]
        if rest:
            options["heads"] = "mse"  # linears outside the encoder layers (heads): data-free
    bar = LayerBar(rest, method if method != "gptq" else "mse (heads)", progress)
    try:
        for name in rest:
            lin = model.get_submodule(name)
            m_opts = {} if method == "gptq" else options
            q = _quantize_one(lin, group_size, "mse" if method == "gptq" else method, m_opts)
            with torch.no_grad():
                errors[name] = _relative_error(q, lin.weight)
            q.backend = backend
            _replace(model, name, q)
            bar.done(name)
    finally:
        bar.close()
    _record(model, names, group_size, include_lm_head, method, options)
    setattr(model, ERRORS_ATTR, errors)
    _drop_fused_qkv(model)
    logger.info(
        "xlmrxl: quantized %d linear layers to int4 (group size %d, method %s; mean relative weight error %.4f)",
        len(names),
        group_size,
        method,
        sum(errors.values()) / max(len(errors), 1),
    )
    return model


def calibration_ids(
    model: nn.Module, calibration: Any, tokenizer: Any = None, seed: int = 0, max_samples: int | None = None
) -> tuple[list[torch.Tensor], dict]:
    """Real token ids of the calibration texts (a random subset of ``max_samples`` of them, drawn with ``seed``)
    and what to record about them."""

    texts = load_texts(calibration)
    if max_samples is not None and len(texts) > int(max_samples):
        g = torch.Generator().manual_seed(int(seed))
        keep = sorted(torch.randperm(len(texts), generator=g)[: int(max_samples)].tolist())
        texts = [texts[i] for i in keep]
    seqs = encode(model, texts, find_tokenizer(model, tokenizer))
    return seqs, {"calibration_texts": len(seqs), "calibration_tokens": int(sum(len(s) for s in seqs))}


def checkpoint_record(quantization_config: Any) -> dict:
    """The options of a checkpoint's ``config.quantization_config``, checked strictly: it must be xlmrxl's int4
    record (``format`` or, before issue 18, ``quant_method`` = ``xlmrxl_int4``), with known keys only; anything
    else (another tool's quantization, a hand-edited record) is an error naming the value and what to do."""
    fix = (
        "quantize the full-precision checkpoint with `xlmrxl quantize`, or delete quantization_config from "
        "config.json if the weights are full precision"
    )
    if not isinstance(quantization_config, dict):
        raise ValueError(
            f"config.json's quantization_config={quantization_config!r} is not xlmrxl's int4 record (a JSON object "
            f"with format={QUANT_METHOD!r}); {fix}"
        )
    marker = quantization_config.get("format", quantization_config.get("quant_method"))
    if marker != QUANT_METHOD:
        other = quantization_config.get("quant_method")
        what = f"quant_method={other!r} (another tool's quantization)" if other is not None else "no format"
        raise ValueError(
            f"config.json's quantization_config {quantization_config!r} has {what}: xlmrxl loads only its own int4 "
            f"checkpoints (format={QUANT_METHOD!r}); {fix}"
        )
    unknown = sorted(set(quantization_config) - _RECORD_KEYS)
    if unknown:
        raise ValueError(
            f"config.json's quantization_config has unknown key(s) {unknown}; xlmrxl's int4 record holds only "
            f"{sorted(_RECORD_KEYS)}: {fix}"
        )
    opts = _parse(quantization_config)
    modules = opts.get("modules")
    if modules is not None and (not isinstance(modules, list) or not all(isinstance(n, str) for n in modules)):
        raise ValueError(f"config.json's quantization_config: modules={modules!r} must be a list of module names")
    if opts.get("method") is not None and opts["method"] not in METHODS:
        raise ValueError(
            f"config.json's quantization_config: method={opts['method']!r} is not one of {', '.join(METHODS)}"
        )
    return opts


def prepare_quantized_model(model: nn.Module, quantization_config: dict) -> nn.Module:
    """Swap in empty ``QuantLinear`` modules (on the weights' device, usually meta) for the layers the config
    names, so that a quantized checkpoint's ``qweight`` / ``scales`` / ``zeros`` load straight into them.
    ``quantization_config`` is checked strictly (``checkpoint_record``)."""
    opts = checkpoint_record(quantization_config)
    names = opts.get("modules") or target_linears(model, opts["include_lm_head"])
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


def _resolve(quantization, method: str | None, options: dict | None) -> tuple[dict, str, dict]:
    opts = _parse(quantization)
    method = method or opts.get("method") or "rtn"
    merged = dict(opts.get("method_options") or {})
    merged.update(options or {})
    extra = {k: merged.pop(k) for k in ("calibration", "tokenizer", "progress") if k in merged}
    for k in ("calibration_texts", "calibration_tokens", "heads"):  # recorded facts, not options
        merged.pop(k, None)
    return opts, method, {**_method_options(method, merged), **extra}


def load_hook(
    model: nn.Module,
    quantization,
    *,
    dtype: torch.dtype,
    device,
    method: str | None = None,
    options: dict | None = None,
) -> Callable | None:
    """The loader's seam (``xlmrxl.checkpoint``): ``hook(name, module)`` returns a ``QuantLinear`` for each chosen
    ``nn.Linear`` right after its weight is read, and releases the full-precision weight (``rtn`` / ``mse``).
    ``gptq`` needs whole layers and texts: no hook (its calibration is checked here, before any weight is read)
    and ``finish_loading`` quantizes the loaded model."""
    opts, method, options = _resolve(quantization, method, options)
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        have = getattr(getattr(model, "config", None), "quantization_config", None) or {}
        if have.get("group_size", opts["group_size"]) != opts["group_size"]:
            raise ValueError(
                f"the checkpoint is already int4 with group_size={have.get('group_size')}; it cannot "
                f"be re-quantized with group_size={opts['group_size']} (load it with quantization=None)"
            )
        return None  # an int4 checkpoint: its QuantLinear modules are loaded as stored
    group = opts["group_size"]
    targets = target_linears(model, opts["include_lm_head"])
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layers to quantize")
    _checktarget_linears(model, targets, group)
    if method == "gptq":
        if options.get("calibration") is None:
            raise ValueError(
                "quantization_method='gptq' needs calibration texts: quantization_options={'calibration': "
                "'texts.txt'} (one text per line) or a list of strings"
            )

        load_texts(options["calibration"])  # a wrong or empty file fails now, not after loading 20 GB
        return None
    progress = options.pop("progress", None)
    for k in ("calibration", "tokenizer"):
        options.pop(k, None)
    _record(model, targets, group, opts["include_lm_head"], method, options)
    bar = LayerBar(targets, method, progress)  # moves as the loader reads each layer's weights
    names = set(targets)
    errors: dict[str, float] = {}
    setattr(model, ERRORS_ATTR, errors)

    def hook(name: str, module: nn.Module) -> nn.Module | None:
        if name not in names or not isinstance(module, nn.Linear):
            return None
        q = _quantize_one(module, group, method, options)
        with torch.no_grad():
            errors[name] = _relative_error(q, module.weight)
        q.backend = getattr(model, "backend", None)
        module.weight = None  # release the full-precision weight now (the loader keeps no other reference)
        bar.done(name)
        return q

    return hook


def finish_loading(
    model: nn.Module, quantization, *, method: str | None = None, options: dict | None = None
) -> nn.Module:
    """The loader's last step: ``gptq`` quantizes the loaded full-precision model here; other methods are done."""
    if quantization is None:
        if method is not None or options:
            raise ValueError("quantization_method / quantization_options need quantization='int4'")
        return model
    opts, method, options = _resolve(quantization, method, options)
    if method != "gptq" or any(isinstance(m, QuantLinear) for m in model.modules()):
        return model
    calibration = options.pop("calibration")
    return quantize(
        model,
        opts["group_size"],
        "gptq",
        calibration,
        opts["include_lm_head"],
        tokenizer=options.pop("tokenizer", None),
        progress=options.pop("progress", None),
        **options,
    )


def quantize_checkpoint(
    src: str | os.PathLike,
    model_class: type,
    *,
    group_size: int = 128,
    method: str = "rtn",
    calibration: str | os.PathLike | Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    backend: str = "auto",
    tokenizer: Any = None,
    progress: bool | None = None,
    **method_options: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load the checkpoint ``src`` as ``model_class`` (the CLI passes ``XLMRobertaXLForMaskedLM``; a parameter, so
    this package never imports the model layer, which imports it) and quantize it (``xlmrxl quantize``); return
    ``(model, report)``.

    Without calibration texts, rtn / mse quantize while loading (one full-precision linear alive at a time). With
    them, the full-precision model is loaded, its final hidden states on the texts kept (fp32, CPU), the model
    quantized in place (gptq calibrates on the texts) and the hidden states compared. ``report``: ``method``,
    ``linears``, ``weight_error`` (mean ``||W - Wq||_F / ||W||_F``), ``weight_error_max``, and with texts
    ``texts`` and ``hidden_cosine`` (``{"mean", "min", "tokens"}``); ``report.quality_lines`` prints it."""
    _check_group_size(group_size)
    _method_options(method, method_options)  # a wrong method / option fails before anything is read
    if method == "gptq" and calibration is None:
        raise ValueError("method 'gptq' needs calibration texts (xlmrxl quantize --calibration FILE, one per line)")
    quant: Any = (
        "int4" if group_size == 128 else {"quant_method": QUANT_METHOD, "bits": 4, "group_size": int(group_size)}
    )
    load = {"dtype": dtype, "device": device, "backend": backend}
    cos = texts = None
    if calibration is None:
        q_options = {**method_options, "progress": progress} if progress is not None else method_options or None
        model = model_class.from_pretrained(
            src, quantization=quant, quantization_method=method, quantization_options=q_options, **load
        )
    else:
        texts = load_texts(calibration)  # a wrong or empty file fails before the weights are read
        model = model_class.from_pretrained(src, **load)
        seqs, _ = calibration_ids(model, texts, tokenizer)
        reference = final_hidden_states(model, seqs)
        quantize(model, group_size, method, texts, tokenizer=tokenizer, progress=progress, **method_options)
        cos = hidden_cosine(reference, model, seqs)
    errs = weight_errors(model)
    report = {
        "method": method,
        "linears": len(errs),
        "weight_error": sum(errs.values()) / max(len(errs), 1),
        "weight_error_max": max(errs.values(), default=0.0),
        "texts": None if texts is None else len(texts),
        "hidden_cosine": cos,
    }
    return model, report
