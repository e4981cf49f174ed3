"""int4 model path: QuantLinear, quantize(), quantize-while-loading, save / load of int4 checkpoints, byte report.

A tiny XLM-R-XL (hidden 256 so that K is a multiple of 128; intermediate 512) in fp32 on CPU (reference backend):
int4 logits vs the unquantized model (cosine >= 0.99 on real tokens), save -> load bit for bit, int4 linear
layers <= 30 % of their bf16 bytes, and ``from_pretrained(quantization="int4") == quantize(from_pretrained())``.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_kwargs
from torch import nn

from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLForMaskedLM, XLMRobertaXLForSequenceClassification
from xlmrxl.backend import Backend
from xlmrxl.quantization import QuantLinear, quantize, quantized_bytes_report
from xlmrxl_kernels.reference.int4 import dequantize_int4_ref

N_LAYERS = 2
LINEARS_PER_LAYER = 6  # q, k, v, attention output, intermediate, output


def _config(**kw):
    return XLMRobertaXLConfig(
        **tiny_config_kwargs(
            hidden_size=256, intermediate_size=512, num_attention_heads=4, num_hidden_layers=N_LAYERS, **kw
        )
    )


def _model(cls=XLMRobertaXLForMaskedLM, **kw):
    torch.manual_seed(0)
    return cls(_config(**kw)).eval()


def _inputs(batch=3, seq=11):
    ids = torch.randint(3, 300, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 1  # pad id
    return ids, mask


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_quantlinear_from_linear(device):
    lin = nn.Linear(256, 37).to(device)
    q = QuantLinear.from_linear(lin, 128)
    assert q.qweight.shape == (37, 128) and q.qweight.dtype == torch.uint8
    assert q.scales.shape == (2, 37) and q.zeros.shape == (2, 37) and q.scales.dtype == torch.float32
    assert q.bias is lin.bias, "the bias Parameter is shared, not copied"
    x = torch.randn(2, 5, 256, device=device)
    out = q(x)
    ref = F.linear(x, q.dequantize(), lin.bias)
    assert out.shape == (2, 5, 37)
    err = (out - ref).abs().max().item()
    assert err <= 1e-5, f"QuantLinear vs F.linear on the dequantized weight: max error {err:.3e}"
    step = (q.scales.t().repeat_interleave(128, 1) / 2).max().item()
    assert (q.dequantize() - lin.weight).abs().max().item() <= step * 1.001
    assert not hasattr(q, "weight"), "QuantLinear exposes no full-precision weight"
    assert "group_size=128" in repr(q)
    with pytest.raises(ValueError, match=r"in_features=200.*group_size=128"):
        QuantLinear.from_linear(nn.Linear(200, 8), 128)


def test_quantlinear_triton_backend_and_concat(device):
    mods = [QuantLinear.from_linear(nn.Linear(128, n).to(device), 64) for n in (16, 24, 8)]
    for m in mods:
        m.backend = Backend("triton")
    x = torch.randn(3, 128, device=device)
    cat = QuantLinear.concat(mods)
    assert cat.qweight.shape == (48, 64) and cat.scales.shape == (2, 48)
    out = cat(x)
    ref = torch.cat([F.linear(x, m.dequantize(), m.bias) for m in mods], dim=-1)
    err = (out - ref).abs().max().item()
    assert err <= 1e-4, f"concatenated QuantLinear (Triton kernel) vs per-layer reference: max error {err:.3e}"
    out = mods[0](x, activation="gelu")
    err = (out - F.gelu(F.linear(x, mods[0].dequantize(), mods[0].bias))).abs().max().item()
    assert err <= 1e-4, f"QuantLinear gelu (Triton kernel): max error {err:.3e}"


def test_quantize_model_accuracy_and_bytes():
    # Random-init weights are int4's worst case: each quantized linear adds ~10 % relative noise (uniform error of
    # step s / sqrt(12), s = range / 15 ~ 0.35 sigma for 128 Gaussians), and in a tiny random model the residual
    # stream is almost all fresh layer output. A trained pre-LN model's residual stream is dominated by features the
    # layers only refine; we emulate that with a word-embedding table 10x the init scale. Both are checked.
    model = _model()
    with torch.no_grad():
        model.roberta.embeddings.word_embeddings.weight.mul_(10)
    ids, mask = _inputs()
    ref = _logits(model, ids, mask)
    plain = _model()
    plain_ref = _logits(plain, ids, mask)
    quantize(model, group_size=128)
    quantize(plain, group_size=128)
    qs = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(qs) == N_LAYERS * LINEARS_PER_LAYER, f"{len(qs)} QuantLinear modules"
    assert isinstance(model.lm_head.dense, nn.Linear) and isinstance(model.lm_head.decoder, nn.Linear)
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight, "tie kept"
    qc = model.config.quantization_config
    assert qc["format"] == "xlmrxl_int4" and "quant_method" not in qc and qc["bits"] == 4 and qc["group_size"] == 128
    assert qc["zero_point_domain"] == "float" and len(qc["modules"]) == len(qs)
    out = _logits(model, ids, mask)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    real = mask.bool()
    cos = F.cosine_similarity(out[real], ref[real], dim=-1).min().item()
    assert cos >= 0.99, f"int4 vs full-precision logits (residual-dominated model): min cosine {cos:.4f}"
    cos = F.cosine_similarity(_logits(plain, ids, mask)[real], plain_ref[real], dim=-1).min().item()
    assert cos >= 0.95, f"int4 vs full-precision logits (plain random init): min cosine {cos:.4f}"
    # bytes: measured on the model in bf16
    rep = quantized_bytes_report(model.to(torch.bfloat16))
    assert rep["quantized_linear_layers"] == len(qs)
    assert rep["ratio"] <= 0.30, f"int4 linears are {100 * rep['ratio']:.1f} % of their bf16 bytes (limit 30 %)"
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model)


def test_per_linear_noise_matches_theory():
    torch.manual_seed(0)
    lin = nn.Linear(512, 256)
    nn.init.normal_(lin.weight, std=0.02)
    q = QuantLinear.from_linear(lin, 128)
    x = torch.randn(200, 512)
    exact, approx = x @ lin.weight.t(), x @ q.dequantize().t()
    rel = ((approx - exact).norm() / exact.norm()).item()
    step = q.scales.float().mean().item()
    predicted = step / 12**0.5 / lin.weight.std().item()
    assert rel <= 1.1 * predicted, f"relative output error {rel:.4f} > 1.1x the predicted {predicted:.4f}"


def test_quantize_errors():
    small = XLMRobertaXLForMaskedLM(XLMRobertaXLConfig(**tiny_config_kwargs())).eval()  # hidden 64, interm. 91
    with pytest.raises(ValueError, match=r"in_features=64 is not a multiple of group_size=128"):
        quantize(small)
    with pytest.raises(ValueError, match=r"layer\.0\.output\.dense: in_features=91 is not a multiple of group_size=32"):
        quantize(small, group_size=32)
    assert not any(isinstance(m, QuantLinear) for m in small.modules()), "a failed quantize leaves the model as is"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_bit_for_bit(tmp_path, dtype):
    model = quantize(_model().to(dtype))
    ids, mask = _inputs()
    ref = _logits(model, ids, mask)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"]["format"] == "xlmrxl_int4"
    loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, dtype=dtype)
    qs = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantLinear)}
    assert len(qs) == N_LAYERS * LINEARS_PER_LAYER
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            for attr in ("qweight", "scales", "zeros", "bias"):
                a, b = getattr(m, attr), getattr(qs[name], attr)
                assert a.dtype == b.dtype and torch.equal(a, b), f"{name}.{attr} changed in save -> load"
    out = _logits(loaded, ids, mask)
    assert torch.equal(out, ref), f"logits changed in save -> load: max {(out - ref).abs().max().item():.3e}"


def test_quantize_while_loading_equals_quantize_after(tmp_path):
    _model().save_pretrained(tmp_path)
    a = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, quantization="int4")
    b = quantize(XLMRobertaXLForMaskedLM.from_pretrained(tmp_path))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"different keys: {sorted(set(sa) ^ set(sb))[:5]}"
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{k} differs"
    assert a.config.quantization_config == b.config.quantization_config
    ids, mask = _inputs()
    assert torch.equal(_logits(a, ids, mask), _logits(b, ids, mask))
    # the dict form of the option (as `xlmrxl quantize --group-size` passes it)
    c = XLMRobertaXLForMaskedLM.from_pretrained(
        tmp_path, quantization={"quant_method": "xlmrxl_int4", "bits": 4, "group_size": 64}
    )
    assert c.config.quantization_config["group_size"] == 64
    assert c.roberta.encoder.layer[0].attention.self.query.scales.shape == (256 // 64, 256)
    with pytest.raises(ValueError, match="quantization"):
        XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, quantization="int8")


def test_include_lm_head_and_classifier(tmp_path):
    model = _model()
    ids, mask = _inputs()
    ref = _logits(model, ids, mask)
    quantize(model, include_lm_head=True)
    assert isinstance(model.lm_head.decoder, QuantLinear) and isinstance(model.lm_head.dense, QuantLinear)
    assert model.lm_head.decoder.bias is model.lm_head.bias, "decoder bias still tied to lm_head.bias"
    assert model.config.tie_word_embeddings is False
    out = _logits(model, ids, mask)
    real = mask.bool()
    cos = F.cosine_similarity(out[real], ref[real], dim=-1).min().item()
    assert cos >= 0.95, f"int4 (heads included, plain random init) vs full precision: min cosine {cos:.4f}"
    model.save_pretrained(tmp_path)
    loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head.decoder, QuantLinear)
    assert torch.equal(_logits(loaded, ids, mask), out)
    clf = quantize(_model(XLMRobertaXLForSequenceClassification, num_labels=3), include_lm_head=True)
    assert isinstance(clf.classifier.dense, QuantLinear) and isinstance(clf.classifier.out_proj, QuantLinear)
    with torch.no_grad():
        assert clf(input_ids=ids, attention_mask=mask).logits.shape == (3, 3)


def test_dequantize_matches_kernel_reference():
    model = quantize(_model())
    m = model.roberta.encoder.layer[1].intermediate.dense
    assert torch.equal(m.dequantize(), dequantize_int4_ref(m.qweight, m.scales, m.zeros, 128))


def test_backend_follows_the_model(tmp_path):
    model = quantize(_model())
    model.set_backend("reference")
    assert all(m.backend.name == "reference" for m in model.modules() if isinstance(m, QuantLinear))
    model.save_pretrained(tmp_path)
    loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, backend="triton")
    assert all(m.backend is loaded.backend for m in loaded.modules() if isinstance(m, QuantLinear))


def test_quantize_while_loading_releases_each_weight(tmp_path, monkeypatch):
    """At most one full-precision linear is alive at a time: when a linear is quantized, every weight quantized
    before it has already been freed (nothing, the loader included, still references it)."""
    import gc
    import weakref

    _model().save_pretrained(tmp_path)
    seen, alive_at_call = [], []
    original = QuantLinear.from_linear.__func__

    def spy(cls, linear, group_size=128):
        gc.collect()
        alive_at_call.append(sum(r() is not None for r in seen))
        seen.append(weakref.ref(linear.weight))
        return original(cls, linear, group_size)

    monkeypatch.setattr(QuantLinear, "from_linear", classmethod(spy))
    XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, quantization="int4")
    assert len(seen) == N_LAYERS * LINEARS_PER_LAYER
    assert max(alive_at_call) == 0, f"full-precision weights still alive while loading: {alive_at_call}"


def test_concat_share_storage(device):
    mods = [QuantLinear.from_linear(nn.Linear(256, n).to(device), 128) for n in (32, 32, 16)]
    x = torch.randn(4, 256, device=device)
    before = [m(x) for m in mods]
    cat = QuantLinear.concat(mods, share_storage=True)
    for m, y in zip(mods, before):
        assert m.qweight.untyped_storage().data_ptr() == cat.qweight.untyped_storage().data_ptr()
        assert m.scales.untyped_storage().data_ptr() == cat.scales.untyped_storage().data_ptr()
        assert torch.equal(m(x), y), "a source layer changed its outputs after sharing storage"
    assert torch.equal(cat(x), torch.cat(before, dim=-1))


def test_quantize_drops_fused_dense_qkv():
    from xlmrxl.fast import fuse_qkv

    model = _model()
    sa = model.roberta.encoder.layer[0].attention.self
    fuse_qkv(sa)
    assert getattr(sa, "_xlmrxl_qkv", None) is not None
    quantize(model)
    assert getattr(sa, "_xlmrxl_qkv", None) is None, "the full-precision fused q/k/v buffer must not outlive quantize"
