"""A tiny random checkpoint directory (model + tokenizer) for the corpus and serve tests."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_config_kwargs

import xlmrxl


def make_checkpoint(directory, spm_dir, cls_name="XLMRobertaXLForMaskedLM", seed=1, **overrides) -> Path:
    """A tiny random checkpoint (weights perturbed so outputs are not near-uniform) + tokenizer."""
    tok = xlmrxl.XLMRobertaTokenizer.from_pretrained(spm_dir)
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(vocab_size=len(tok), **overrides))
    torch.manual_seed(seed)
    model = getattr(xlmrxl, cls_name)(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return Path(directory)
