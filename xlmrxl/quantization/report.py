"""What int4 keeps: bytes of a quantized model, relative weight errors, and the cosine of final hidden states
against the unquantized model on real tokens."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .calibration import batches, encode, find_tokenizer, load_texts
from .gptq import _base_model
from .linear import ERRORS_ATTR, QuantLinear


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


def weight_errors(model: nn.Module) -> dict[str, float]:
    """``||W - Wq||_F / ||W||_F`` per linear, recorded when ``model`` was quantized (empty if it was loaded int4)."""
    return dict(getattr(model, ERRORS_ATTR, {}) or {})


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
