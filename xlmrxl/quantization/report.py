"""What int4 costs and keeps: bytes of a quantized model, int4 sizes of XL / XXL computed on the meta device,
relative weight errors, and the cosine of final hidden states against the unquantized model on real tokens."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .linear import QuantLinear

# the published shapes (facebook/xlm-roberta-xl, facebook/xlm-roberta-xxl; XCOMET-XL / -XXL share them)
SIZES: dict[str, dict[str, int]] = {
    "xl": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "intermediate_size": 10240},
    "xxl": {"hidden_size": 4096, "num_hidden_layers": 48, "num_attention_heads": 32, "intermediate_size": 16384},
}


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


def int4_memory_report(
    config: Any = "xxl", group_size: int = 128, include_lm_head: bool = False, dtype: torch.dtype = torch.bfloat16
) -> dict[str, Any]:
    """Bytes of a masked-LM model with int4 linears, counted on the meta device (nothing is allocated).

    ``config``: ``"xl"``, ``"xxl"``, an ``XLMRobertaXLConfig`` or its dict. Linears in the encoder layers (and the
    heads with ``include_lm_head``) are int4 ``(N, K / 2)`` bytes plus ``scales`` and ``zeros`` ``(K / G, N)`` and
    the bias in ``dtype``; everything else (embeddings, LayerNorms, unquantized heads) in ``dtype``; the LM decoder
    tied to the word embeddings counts once."""
    from ..config import XLMRobertaXLConfig
    from ..modeling import XLMRobertaXLForMaskedLM
    from .api import _targets

    name = config if isinstance(config, str) else None
    if isinstance(config, str):
        if config.lower() not in SIZES:
            raise ValueError(f"size {config!r} is not one of {sorted(SIZES)}; pass a config instead")
        config = XLMRobertaXLConfig(**SIZES[config.lower()])
    elif isinstance(config, dict):
        config = XLMRobertaXLConfig(**{k: v for k, v in config.items() if k != "quantization_config"})
    else:
        config = XLMRobertaXLConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    config.tie_word_embeddings = not include_lm_head
    layers = int(config.num_hidden_layers)
    config.num_hidden_layers = 1  # layers are identical: build one (on meta) and count it `layers` times
    with torch.device("meta"):
        model = XLMRobertaXLForMaskedLM(config)
    config.num_hidden_layers = layers
    if include_lm_head:
        model.lm_head.decoder.weight = nn.Parameter(torch.empty_like(model.lm_head.decoder.weight))
    esize = torch.empty((), dtype=dtype).element_size()

    def times(name: str) -> int:
        return layers if ".encoder.layer." in f".{name}" else 1

    targets = _targets(model, include_lm_head)
    odd = sorted(t for t in targets if model.get_submodule(t).in_features % group_size)
    if odd:
        raise ValueError(
            f"{odd[0]}: in_features={model.get_submodule(odd[0]).in_features} is not a multiple of "
            f"group_size={group_size}: no int4 layout at this group size"
        )
    int4 = scales = linear_weights = 0
    seen = set()
    for t in targets:
        lin = model.get_submodule(t)
        n, k = lin.out_features, lin.in_features
        int4 += times(t) * n * k // 2
        scales += times(t) * 2 * (k // group_size) * n * esize
        linear_weights += times(t) * n * k * esize
        seen.add(id(lin.weight))
    other = 0
    for pname, p in list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers()):
        if id(p) in seen or not p.is_floating_point():
            continue
        seen.add(id(p))
        other += times(pname) * p.numel() * esize
    embeddings = sum(p.numel() * esize for p in model.roberta.embeddings.parameters())
    total = int4 + scales + other
    return {
        "size": name,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "group_size": group_size,
        "dtype": str(dtype).replace("torch.", ""),
        "include_lm_head": include_lm_head,
        "int4_linears": sum(times(t) for t in targets),
        "int4_weight_bytes": int4,
        "scales_zeros_bytes": scales,
        "embedding_bytes": embeddings,
        "other_bytes": other,
        "total_bytes": total,
        "bf16_total_bytes": total - int4 - scales + linear_weights,
    }


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def format_memory_report(rep: dict[str, Any]) -> str:
    """One line: ``XXL int4 g128: 7.23 GB (int4 weights 4.83 GB + scales/zeros 0.30 GB + ...; all-bf16 21.43 GB)``."""
    label = (rep["size"] or f"hidden {rep['hidden_size']}").upper()
    return (
        f"{label} int4 g{rep['group_size']}{' +heads' if rep['include_lm_head'] else ''}: "
        f"{_size(rep['total_bytes'])} (int4 weights {_size(rep['int4_weight_bytes'])} + scales/zeros "
        f"{_size(rep['scales_zeros_bytes'])} + {rep['dtype']} embeddings {_size(rep['embedding_bytes'])} + "
        f"other {_size(rep['other_bytes'] - rep['embedding_bytes'])}; all-{rep['dtype']} "
        f"{_size(rep['bf16_total_bytes'])})"
    )


def weight_errors(model: nn.Module) -> dict[str, float]:
    """``||W - Wq||_F / ||W||_F`` per linear, recorded when ``model`` was quantized (empty if it was loaded int4)."""
    from .api import _ERRORS_ATTR

    return dict(getattr(model, _ERRORS_ATTR, {}) or {})


def weight_error(model_fp: nn.Module, model_q: nn.Module) -> float:
    """Mean over the quantized linears of ``||W - Wq||_F / ||W||_F``, ``W`` from ``model_fp`` (same names)."""
    errs = []
    with torch.no_grad():
        for name, q in model_q.named_modules():
            if not isinstance(q, QuantLinear):
                continue
            w = model_fp.get_submodule(name).weight.detach().float()
            errs.append(float((q.dequantize().float().to(w.device) - w).norm() / w.norm().clamp(min=1e-30)))
    if not errs:
        raise ValueError(f"{type(model_q).__name__} has no QuantLinear modules: nothing to compare")
    return sum(errs) / len(errs)


def final_hidden_states(
    model: nn.Module,
    texts: str | os.PathLike | Sequence[str] | Sequence[torch.Tensor],
    tokenizer: Any = None,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """The final hidden states (after the encoder's last LayerNorm) of each text's real tokens, fp32 on the CPU:
    one ``(L_i, H)`` tensor per text. ``texts``: a file, a list of strings, or token-id tensors."""
    from .calibration import batches, encode, find_tokenizer, load_texts
    from .gptq import _base_model

    if isinstance(texts, (list, tuple)) and texts and isinstance(texts[0], torch.Tensor):
        seqs = list(texts)
    else:
        seqs = encode(model, load_texts(texts), find_tokenizer(model, tokenizer))
    _, base = _base_model(model)
    device = base.embeddings.word_embeddings.weight.device
    out: list[torch.Tensor | None] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))  # the order batches() uses
    pos = 0
    with torch.no_grad():
        for ids, mask in batches(seqs, batch_size, int(getattr(model.config, "pad_token_id", 1))):
            h = base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for j in range(ids.shape[0]):
                out[order[pos]] = h[j, : int(mask[j].sum())].float().cpu()
                pos += 1
    return out  # type: ignore[return-value]


def hidden_cosine(
    reference: nn.Module | Sequence[torch.Tensor],
    model_q: nn.Module,
    texts: Any,
    tokenizer: Any = None,
) -> dict[str, float]:
    """Cosine of ``model_q``'s final hidden states against ``reference`` (the unquantized model, or its
    ``final_hidden_states`` computed before quantizing) on ``texts``, per real token: ``{"mean", "min"}``."""
    from .calibration import encode, find_tokenizer, load_texts

    if isinstance(texts, (list, tuple)) and texts and isinstance(texts[0], torch.Tensor):
        seqs = list(texts)
    else:
        seqs = encode(model_q, load_texts(texts), find_tokenizer(model_q, tokenizer))
    ref = reference if isinstance(reference, (list, tuple)) else final_hidden_states(reference, seqs)
    got = final_hidden_states(model_q, seqs)
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        raise ValueError("the reference hidden states do not match these texts (another text list?)")
    cos = torch.nn.functional.cosine_similarity(torch.cat(got), torch.cat(ref), dim=-1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "tokens": int(cos.numel())}


def memory_lines(config: Any = None, group_size: int = 128) -> list[str]:
    """The int4 size lines ``xlmrxl info`` prints: the given config (a dict or config; skipped if None), then XL
    and XXL, all computed on the meta device."""
    lines = []
    for label, cfg in ([("this model", config)] if config is not None else []) + [("XL", "xl"), ("XXL", "xxl")]:
        try:
            rep = int4_memory_report(cfg, group_size)
            if label == "this model":
                rep["size"] = "this model"
            lines.append(format_memory_report(rep))
        except (ValueError, TypeError) as exc:
            lines.append(f"{label.upper()} int4 g{group_size}: n/a ({exc})")
    return lines


def quality_lines(report: dict[str, Any]) -> list[str]:
    """What ``xlmrxl quantize`` prints about the result: method, mean relative weight error, hidden cosine."""
    out = [
        f"quality ({report['method']}): mean relative weight error {report['weight_error']:.4f} "
        f"over {report['linears']} linears (max {report['weight_error_max']:.4f})"
    ]
    cos = report.get("hidden_cosine")
    if cos is not None:
        out.append(
            f"quality ({report['method']}): final hidden states vs the unquantized model on the "
            f"{report['texts']} calibration texts: cosine mean {cos['mean']:.5f}, min {cos['min']:.5f} "
            f"({cos['tokens']} real tokens)"
        )
    return out
