"""The transformers 4.56.2 oracle for parity tests, shared by every test file.

- ``hf_twin(model, attn_implementation=None)``: the transformers model of the same class as ``model`` (an xlmrxl
  model), built from our config dict, loaded with our ``state_dict`` strictly, cast to our dtype, in eval mode.
  Attention implementation: ``model.config.attn_implementation`` (``"sdpa"`` by default, which is also transformers'
  default; 4.56.2 falls back to eager itself for output_attentions / head_mask / relative positions, and so do we).
- ``make_inputs(config, batch=3, seq=9, pad=True, fully_padded_row=True, seed=0, token_type_ids=False,
  left_pad=True, device=None)``: a dict with
  ``input_ids`` (real tokens never equal the pad id; pads are the pad id) and ``attention_mask`` (1 = real); row 0 is
  full length, row 1 right-padded, the last row fully padded when asked, others random length, some left-padded
  (none with ``left_pad=False``, so token 0 is real in every row that has a real token).
- ``real(inputs)``: the bool (B, S) mask of real tokens. ``max_err(a, b, where=None)``: max |a - b| (over ``where``).
- ``assert_lowp(ours, theirs, truth, where, name)``: the low-precision rule "our error vs the fp32 truth ≤ 2× the
  oracle's error in the same dtype".
- ``left_padded(config, lengths, seq, seed=0)``: (ids, mask), row r left-padded to ``seq`` with ``lengths[r]`` real ids.
- ``FastPathSpy(monkeypatch)`` (alias ``EncoderForwardSpy``): counts calls into the fused stack, ``.encoder`` (packed,
  also ``.calls``) and ``.decoder`` (cached). ``force_exact(monkeypatch)``: every call takes the exact path.
- ``randomize(model)``: every parameter redrawn in place from the global RNG (LayerNorm scales ~1 + N(0, 0.2),
  the rest ~N(0, 0.1)).
- ``random_model(cls, config, seed=0, embed_std=None, **kw)``: ``cls(config, **kw)`` with non-trivial weights
  everywhere (biases ~N(0, 0.1), LayerNorm scales ~N(1, 0.1), so parity covers every term), in eval mode.
"""

from __future__ import annotations

import torch


def _transformers():
    import transformers

    return transformers


def random_model(cls, config, seed: int = 0, embed_std: float | None = None, **kw):
    """``cls(config, **kw)`` with random biases and LayerNorm parameters too; ``embed_std`` widens the word
    embeddings (sharper logits: fewer near-ties in greedy comparisons). Seeded, in eval mode."""
    torch.manual_seed(seed)
    m = cls(config, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "LayerNorm" in name or "layer_norm" in name:
                p.normal_(1.0, 0.1)
            elif embed_std is not None and "word_embeddings" in name:
                p.normal_(0.0, embed_std)
    return m.eval()


def randomize(model):
    """Non-trivial weights everywhere, in place, from the global RNG: LayerNorm scales ~1 + N(0, 0.2), every other
    parameter (biases included) ~N(0, 0.1). Returns ``model``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight") or name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def hf_twin(model, attn_implementation: str | None = None):
    """transformers twin of an xlmrxl model: same class name, config, weights, dtype; eval mode."""
    tf = _transformers()
    cls = getattr(tf, type(model).__name__)
    hcfg = tf.XLMRobertaXLConfig.from_dict(model.config.to_dict())
    hcfg._attn_implementation = attn_implementation or model.config.attn_implementation
    if type(model).__name__ == "XLMRobertaXLModel":
        twin = cls(hcfg, add_pooling_layer=model.pooler is not None)
    else:
        twin = cls(hcfg)
    twin.load_state_dict(model.state_dict(), strict=True)
    twin.to(dtype=model.dtype)
    return twin.eval()


def make_inputs(
    config,
    batch: int = 3,
    seq: int = 9,
    pad: bool = True,
    fully_padded_row: bool = True,
    seed: int = 0,
    token_type_ids: bool = False,
    left_pad: bool = True,
    device=None,
) -> dict:
    """Random ids (never the pad id for real tokens), padding as described in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    pad_id = config.pad_token_id
    ids = torch.randint(0, config.vocab_size - 1, (batch, seq), generator=g)
    ids = ids + (ids >= pad_id).long()  # skip the pad id
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad:
        for row in range(1, batch):
            if fully_padded_row and row == batch - 1:
                length, left = 0, False
            elif row == 1:
                length, left = max(1, seq - 3), False
            else:
                length = int(torch.randint(1, seq + 1, (1,), generator=g))
                left = bool(torch.randint(0, 2, (1,), generator=g)) and left_pad
            if left:
                mask[row, : seq - length] = 0
            else:
                mask[row, length:] = 0
        ids = ids.masked_fill(mask == 0, pad_id)
    out = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids:
        out["token_type_ids"] = torch.randint(0, config.type_vocab_size, (batch, seq), generator=g)
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def real(inputs: dict) -> torch.Tensor:
    return inputs["attention_mask"].bool()


def max_err(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    assert a.shape == b.shape, f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}"
    d = (a.detach().float() - b.detach().float()).abs()
    if where is not None:
        d = d[where]
    return float(d.max()) if d.numel() else 0.0


def assert_lowp(
    ours: torch.Tensor, theirs: torch.Tensor, truth: torch.Tensor, where=None, name: str = "output", floor: float = 1e-6
) -> None:
    """Low-precision rule: max|ours - truth| ≤ 2 × max|theirs - truth| (plus a tiny floor for exact ties)."""
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} vs {theirs.dtype}"
    e_ours, e_ref = max_err(ours, truth, where), max_err(theirs, truth, where)
    assert e_ours <= 2 * e_ref + floor, f"{name}: our error {e_ours:.3g} > 2 x transformers' error {e_ref:.3g}"


def left_padded(config, lengths, seq: int, seed: int = 0):
    """Random real ids (never the pad id), row r left-padded to ``seq`` with ``seq - lengths[r]`` pads; (ids, mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (len(lengths), seq), generator=g)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for r, n in enumerate(lengths):
        mask[r, seq - n :] = 1
    return ids.masked_fill(mask == 0, config.pad_token_id), mask


class FastPathSpy:
    """Counts the calls into the fused layer stack (``xlmrxl.fast.stack``): ``.encoder`` (packed,
    ``encoder_forward``) and ``.decoder`` (cached, ``decoder_forward``); ``.calls`` is ``.encoder``. Proof that the
    fused path ran."""

    def __init__(self, monkeypatch):
        from xlmrxl.fast import decode, stack

        self.encoder = self.decoder = 0
        real_enc, real_dec = stack.encoder_forward, decode.decoder_forward

        def enc(*a, **k):
            self.encoder += 1
            return real_enc(*a, **k)

        def dec(*a, **k):
            self.decoder += 1
            return real_dec(*a, **k)

        monkeypatch.setattr(stack, "encoder_forward", enc)
        monkeypatch.setattr(decode, "decoder_forward", dec)

    @property
    def calls(self) -> int:
        return self.encoder


EncoderForwardSpy = FastPathSpy


def force_exact(monkeypatch) -> None:
    """Make every call take the exact path (the route says so), to compare the fused path against it."""
    from xlmrxl.fast import routing
    from xlmrxl.reasons import Reason

    real = routing._common_not_supported

    def forced(encoder, call):
        return [*real(encoder, call), Reason("test", "forced by the test")]

    monkeypatch.setattr(routing, "_common_not_supported", forced)


def cache_kw(model) -> str:
    """The keyword ``model``'s forward takes the KV cache under, read from its signature as users' code must:
    ``cache`` on transformers >= 5.24 (``past_key_values`` is a deprecated alias there), ``past_key_values`` on
    4.x and on xlmrxl's own models."""
    import inspect

    fn = getattr(type(model), "forward", None) or model
    params = inspect.signature(fn).parameters
    return "cache" if "cache" in params else "past_key_values"


def out_cache(out):
    """The cache an output returns, under its class's field name (``cache`` on transformers >= 5.24)."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    return out["cache"] if "cache" in fields and "cache" in out else getattr(out, "past_key_values", None)


# the backbone and every task head, by class name (ours and transformers' share the names)
HEADS = [
    "XLMRobertaXLModel",
    "XLMRobertaXLForMaskedLM",
    "XLMRobertaXLForCausalLM",
    "XLMRobertaXLForSequenceClassification",
    "XLMRobertaXLForMultipleChoice",
    "XLMRobertaXLForTokenClassification",
    "XLMRobertaXLForQuestionAnswering",
]
