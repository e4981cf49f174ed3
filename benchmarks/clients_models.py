"""Offline builders for the client benchmarks and tests: a random-weight XLM-RoBERTa-XL checkpoint directory with a
SentencePiece tokenizer, COMET metrics (XCOMET-, CometKiwi-, COMET-22-shaped) on it, and WMT-like segments.

Everything is built locally (no hub access): ``encoder_dir`` writes ``config.json``, ``model.safetensors``,
``sentencepiece.bpe.model`` and transformers' tokenizer files; COMET builds its encoder from that directory with
``pretrained_model=<dir>, load_pretrained_weights=True, local_files_only=True``. Weights are random (biases and
LayerNorm parameters too) and the layer-mix weights are randomised so that a wrong layer or weight shows.
comet and transformers are imported inside the functions (optional extras).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from xlmrxl.tiny import tiny_shape

XL = dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, intermediate_size=10240)
TINY = tiny_shape()


def encoder_dir(root, shape: dict | None = None, seed: int = 0, dtype=torch.float32, weights: bool = True) -> Path:
    """A transformers XLM-RoBERTa-XL checkpoint directory (random weights) with its tokenizer, built once.
    ``weights=False`` writes the config and tokenizer only (COMET with ``load_pretrained_weights=False`` builds the
    model from the config; an XL-sized benchmark randomises it in place instead of writing 7 GB)."""
    import transformers

    from xlmrxl.tokenizer import train_sentencepiece

    root = Path(root)
    if (root / "config.json").is_file():
        return root
    train_sentencepiece(root, vocab_size=1000)
    tok = transformers.XLMRobertaTokenizer.from_pretrained(str(root))  # reads sentencepiece.bpe.model (4.x and 5.x)
    cfg = transformers.XLMRobertaXLConfig(
        vocab_size=len(tok),
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **(shape or TINY),
    )
    if not weights:
        cfg.save_pretrained(root)
        _save_tokenizer(tok, root)
        return root
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # an XL model is built directly in its dtype (no fp32 copy first)
    try:
        model = transformers.XLMRobertaXLModel(cfg, add_pooling_layer=False).eval()
    finally:
        torch.set_default_dtype(old)
    randomise(model)
    model.save_pretrained(root)
    _save_tokenizer(tok, root)
    return root


def _save_tokenizer(tok, root: Path) -> None:
    """transformers' tokenizer files (4.x: the slow tokenizer's, then the fast one's tokenizer.json, which COMET's
    ``XLMRobertaTokenizerFast`` would otherwise convert at every load; 5.x writes tokenizer.json itself)."""
    import transformers

    tok.save_pretrained(root)
    fast = getattr(transformers, "XLMRobertaTokenizerFast", None)
    if fast is not None and not (root / "tokenizer.json").is_file():
        fast.from_pretrained(str(root)).save_pretrained(root)


def randomise(model) -> None:
    """Random weights in place, every term non-trivial: tokens differ, layers matter, biases and LN scales random."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "LayerNorm" in name or "layer_norm" in name:
                p.normal_(1.0, 0.1)
            elif "embeddings" in name:
                p.normal_(0.0, 1.0)
            elif ".query." in name or ".key." in name:
                p.normal_(0.0, 3.0 * p.shape[-1] ** -0.5)  # sharp attention: a token's state depends on the others
            else:
                p.normal_(0.0, 2.0 * p.shape[-1] ** -0.5)


def _randomise_heads(metric, seed: int, word_scale: float = 1.5) -> None:
    """Random layer-mix weights (sparsemax then zeroes some), gamma != 1, sharper word-level logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mix = getattr(metric, "layerwise_attention", None)
        if mix is not None:
            for p in mix.scalar_parameters:
                p.copy_(torch.randn(1, generator=g))
            mix.gamma.copy_(1.0 + 0.3 * torch.randn(1, generator=g))
        head = getattr(metric, "hidden2tag", None)
        if head is not None:
            head.weight.normal_(0.0, word_scale * head.weight.shape[-1] ** -0.5, generator=g)
            head.bias.copy_(torch.tensor([1.5] + [0.0] * (head.bias.numel() - 1)))  # mostly "O", some spans


def comet_model(kind: str, encoder: Path, seed: int = 0, *, weights: bool = True, **overrides):
    """A COMET metric on ``encoder`` (random heads; ``weights=False``: a config-only directory, the encoder built
    from it and randomised in place), eval mode, gradients off. ``kind``:
    ``xcomet`` (XCOMETMetric: sparsemax mix, no layer norm, word-level head on the last layer), ``kiwi``
    (UnifiedMetric, CometKiwi-XL-shaped: mt + src, sparsemax mix with per-layer normalisation), ``comet22``
    (RegressionMetric: softmax mix with normalisation, average pooling)."""
    import transformers
    from comet.models import RegressionMetric, UnifiedMetric, XCOMETMetric

    layers = transformers.XLMRobertaXLConfig.from_pretrained(str(encoder)).num_hidden_layers
    hidden = transformers.XLMRobertaXLConfig.from_pretrained(str(encoder)).hidden_size
    common = dict(
        encoder_model="XLM-RoBERTa-XL",
        pretrained_model=str(encoder),
        load_pretrained_weights=weights,
        local_files_only=True,
    )
    torch.manual_seed(seed)
    if kind == "xcomet":
        kw = dict(common, word_layer=layers, hidden_sizes=[hidden, hidden // 2], layer_norm=False)
        kw.update(overrides)
        model = XCOMETMetric(**kw)
    elif kind == "kiwi":
        kw = dict(
            common,
            sent_layer="mix",
            layer_transformation="sparsemax",
            layer_norm=True,
            hidden_sizes=[hidden, hidden // 2],
            input_segments=["mt", "src"],
            word_level_training=False,
        )
        kw.update(overrides)
        model = UnifiedMetric(**kw)
    elif kind == "comet22":
        kw = dict(common, layer="mix", layer_transformation="softmax", layer_norm=True, pool="avg")
        kw.update(overrides)
        model = RegressionMetric(**kw, hidden_sizes=[hidden, hidden // 2])
    else:
        raise ValueError(f"unknown COMET kind {kind!r}; use 'xcomet', 'kiwi' or 'comet22'")
    if not weights:
        randomise(model.encoder.model)
    _randomise_heads(model, seed)
    return model.eval().requires_grad_(False)


def sentences(n: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """``n`` sentences of ``min_words``-``max_words`` words drawn from the shipped multilingual corpus."""
    from xlmrxl.tokenizer import CORPUS_PATH

    words = Path(CORPUS_PATH).read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        start = rng.randrange(0, len(words) - k)
        out.append(" ".join(words[start : start + k]))
    return out


def wmt_samples(n: int, min_words: int = 5, max_words: int = 120, seed: int = 0, ref: bool = True) -> list[dict]:
    """WMT-like triples: source / hypothesis / reference of ``min_words``-``max_words`` words each (uniform)."""
    src = sentences(n, min_words, max_words, seed)
    mt = sentences(n, min_words, max_words, seed + 1)
    refs = sentences(n, min_words, max_words, seed + 2)
    return [dict(src=s, mt=m, ref=r) if ref else dict(src=s, mt=m) for s, m, r in zip(src, mt, refs)]
