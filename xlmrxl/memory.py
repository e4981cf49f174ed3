"""Weight memory of a model, bf16 and int4 group-wise, counted on the meta device (nothing is allocated): what
``xlmrxl info`` prints for a checkpoint and for the published XL / XXL shapes.

It sits above the model layer (it builds a model on ``meta``) and the quantization package (it asks which linears
int4 replaces), so neither of them imports it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import XLMRobertaXLConfig
from .modeling import XLMRobertaXLForMaskedLM
from .quantization import target_linears

# the published shapes (facebook/xlm-roberta-xl, facebook/xlm-roberta-xxl; XCOMET-XL / -XXL share them)
SIZES: dict[str, dict[str, int]] = {
    "xl": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "intermediate_size": 10240},
    "xxl": {"hidden_size": 4096, "num_hidden_layers": 48, "num_attention_heads": 32, "intermediate_size": 16384},
}


def int4_memory_report(
    config: Any = "xxl", group_size: int = 128, include_lm_head: bool = False, dtype: torch.dtype = torch.bfloat16
) -> dict[str, Any]:
    """Bytes of a masked-LM model with int4 linears, counted on the meta device (nothing is allocated).

    ``config``: ``"xl"``, ``"xxl"``, an ``XLMRobertaXLConfig`` or its dict. Linears in the encoder layers (and the
    heads with ``include_lm_head``) are int4 ``(N, K / 2)`` bytes plus ``scales`` and ``zeros`` ``(K / G, N)`` and
    the bias in ``dtype``; everything else (embeddings, LayerNorms, unquantized heads) in ``dtype``; the LM decoder
    tied to the word embeddings counts once."""
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

    targets = target_linears(model, include_lm_head)
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
