"""int4 methods (rtn / mse / gptq): same format, better parameters, calibrated GPTQ, reports, errors.

Tiny XLM-R-XL models (hidden 256, intermediate 512, 2 layers) with fp16 weights, evaluated in fp32 on CPU (fp16
GEMMs on CPU add their own noise), on real token ids of the shipped corpus through a tiny SentencePiece tokenizer:
even lines calibrate, odd lines evaluate. Logits error = 1 - cosine vs the unquantized model, mean over real tokens.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_kwargs

from xlmrxl import XLMRobertaXLConfig, XLMRobertaXLForMaskedLM
from xlmrxl.memory import int4_memory_report
from xlmrxl.quantization import (
    QuantLinear,
    final_hidden_states,
    hidden_cosine,
    quantize,
    quantize_weight,
    weight_error,
    weight_errors,
)
from xlmrxl.tokenizer import CORPUS_PATH, XLMRobertaTokenizer
from xlmrxl_kernels.reference.int4 import dequantize_int4_ref, quantize_int4_ref


def _lines():
    return [t for t in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if t.strip()]


CALIB = _lines()[::2]
EVAL = _lines()[1::2][:48]


@pytest.fixture(scope="module")
def tok(spm_dir):
    return XLMRobertaTokenizer.from_pretrained(spm_dir)


def _build(kind="random", seed=0, dtype=torch.float16):
    torch.manual_seed(seed)
    cfg = XLMRobertaXLConfig(
        **tiny_config_kwargs(
            hidden_size=256,
            intermediate_size=512,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1008,
            max_position_embeddings=130,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    model = XLMRobertaXLForMaskedLM(cfg).eval()
    if kind == "outliers":  # trained-like: a few outlier features and a shared low-rank component in the residual
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            E = model.roberta.embeddings.word_embeddings.weight
            E[:, torch.randperm(256, generator=g)[:8]] *= 20
            basis = torch.linalg.qr(torch.randn(256, 16, generator=g))[0]
            E += (torch.randn(E.shape[0], 16, generator=g) * 0.3) @ basis.T
    return model.to(dtype)


def _logits(model, enc):
    with torch.no_grad():
        return copy.deepcopy(model).float()(**enc).logits


def _err(model, ref, enc):
    real = enc["attention_mask"].bool()
    return (1 - F.cosine_similarity(_logits(model, enc)[real], ref[real], dim=-1)).mean().item()


@pytest.fixture(scope="module")
def enc(tok):
    e = tok(EVAL, padding=True, truncation=True, max_length=128, return_tensors="pt")
    return {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}


def test_rtn_is_the_plain_min_max_bit_for_bit():
    base = _build()
    weights = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    a = quantize(copy.deepcopy(base))
    b = quantize(copy.deepcopy(base), method="rtn")
    for name, m in a.named_modules():
        if isinstance(m, QuantLinear):
            want = quantize_int4_ref(weights[name], 128)
            for got, exp, what in zip((m.qweight, m.scales, m.zeros), want, ("qweight", "scales", "zeros")):
                assert got.dtype == exp.dtype and torch.equal(got, exp), f"{name}.{what} differs from min-max"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    qc = a.config.quantization_config
    assert qc["method"] == "rtn" and qc["method_options"] == {} and qc["format"] == "xlmrxl_int4"
    old_form = quantize(copy.deepcopy(base), 128, True)  # quantize(model, group_size, include_lm_head) still works
    assert isinstance(old_form.lm_head.dense, QuantLinear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mse_same_format_never_worse_per_group(dtype):
    torch.manual_seed(1)
    w = (torch.randn(96, 384) * 0.02).to(dtype)
    w[3, 5] = 0.5  # an outlier: its group gains most from clipping the other end
    r, m = quantize_weight(w, 128, "rtn"), quantize_weight(w, 128, "mse")
    for x, y in zip(r, m):
        assert x.shape == y.shape and x.dtype == y.dtype
    er = (dequantize_int4_ref(*r, 128).float() - w.float()).reshape(96, 3, 128).square().sum(-1)
    em = (dequantize_int4_ref(*m, 128).float() - w.float()).reshape(96, 3, 128).square().sum(-1)
    assert bool((em <= er * (1 + 1e-6)).all()), f"a group got worse: max ratio {(em / er).max().item():.4f}"
    gain = 1 - (em.sum() / er.sum()).item()
    assert gain >= 0.12, f"mse lowers the squared weight error by only {100 * gain:.1f} % (expected ~17 %)"


def test_mse_lowers_the_logits_error(enc):
    """Mean over three random draws of each model kind (one draw varies a lot: cross-layer terms)."""
    out = {}
    for kind in ("random", "outliers"):
        rows = []
        for seed in range(3):
            base = _build(kind, seed)
            ref = _logits(base, enc)
            e_rtn = _err(quantize(copy.deepcopy(base), method="rtn"), ref, enc)
            e_mse = _err(quantize(copy.deepcopy(base), method="mse"), ref, enc)
            rows.append((e_rtn, e_mse))
        rtn, mse = sum(r for r, _ in rows) / 3, sum(m for _, m in rows) / 3
        out[kind] = (rtn, mse, 1 - mse / rtn, [f"{1 - m / r:+.3f}" for r, m in rows])
    msg = "; ".join(
        f"{k}: rtn {r:.5f}, mse {m:.5f}, reduction {100 * g:.1f} % (per seed {s})" for k, (r, m, g, s) in out.items()
    )
    assert out["random"][2] >= 0.10, msg
    assert out["outliers"][2] >= 0.10, msg


@pytest.fixture(scope="module")
def gptq_runs(tok, enc):
    res = {}
    for kind in ("random", "outliers"):
        base = _build(kind)
        ref = _logits(base, enc)
        rtn = quantize(copy.deepcopy(base))
        g = quantize(copy.deepcopy(base), method="gptq", calibration=CALIB, tokenizer=tok)
        res[kind] = {"base": base, "rtn": rtn, "gptq": g, "e_rtn": _err(rtn, ref, enc), "e_gptq": _err(g, ref, enc)}
    return res


def test_gptq_lowers_the_logits_error_well_below_rtn(gptq_runs):
    msg = "; ".join(
        f"{k}: rtn {r['e_rtn']:.5f}, gptq {r['e_gptq']:.5f} ({100 * (1 - r['e_gptq'] / r['e_rtn']):.1f} % lower)"
        for k, r in gptq_runs.items()
    )
    for r in gptq_runs.values():
        assert r["e_gptq"] <= 0.5 * r["e_rtn"], msg
    qc = gptq_runs["random"]["gptq"].config.quantization_config
    assert qc["method"] == "gptq" and qc["method_options"]["calibration_texts"] == len(CALIB)
    assert qc["method_options"]["percdamp"] == 0.01 and qc["method_options"]["blocksize"] == 128


def test_gptq_is_reproducible(tok):
    base = _build(dtype=torch.float32)  # (fp32: CPU fp16 GEMMs are slow; the quality tests cover fp16)
    kw = {"calibration": CALIB, "tokenizer": tok, "max_samples": 24, "seed": 3, "params": "rtn"}
    a = quantize(copy.deepcopy(base), method="gptq", **kw)
    b = quantize(copy.deepcopy(base), method="gptq", **kw)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"two GPTQ runs with one seed differ in {diff[:3]}"
    assert a.config.quantization_config == b.config.quantization_config


def test_quality_report_functions(gptq_runs, tok):
    r = gptq_runs["random"]
    fp, rtn, g = r["base"], r["rtn"], r["gptq"]
    w_rtn, w_gptq = weight_error(fp, rtn), weight_error(fp, g)
    stored = weight_errors(rtn)
    assert len(stored) == 12 and abs(sum(stored.values()) / 12 - w_rtn) < 1e-6
    assert 0.08 < w_rtn < 0.12, f"rtn relative weight error {w_rtn:.4f} (theory ~0.10)"
    assert w_gptq > w_rtn * 0.9, "GPTQ trades weight error for output error: it does not shrink the weight error"
    ref = final_hidden_states(fp.float(), EVAL[:16], tok)
    c_rtn = hidden_cosine(ref, copy.deepcopy(rtn).float(), EVAL[:16], tok)
    c_gptq = hidden_cosine(fp.float(), copy.deepcopy(g).float(), EVAL[:16], tok)
    assert c_rtn["tokens"] == sum(len(t) for t in ref)
    assert c_gptq["mean"] > c_rtn["mean"], f"hidden cosine gptq {c_gptq} vs rtn {c_rtn}"


@pytest.mark.parametrize("method", ["rtn", "mse", "gptq"])
def test_save_load_bit_exact(tmp_path, tok, method, enc):
    light = {"gptq": {"calibration": CALIB[:16], "tokenizer": tok, "params": "rtn"}, "mse": {"grid": 3}}
    dtype = torch.float32 if method == "gptq" else torch.float16  # (CPU fp16 GEMMs are slow)
    model = quantize(_build(dtype=dtype), method=method, **light.get(method, {}))
    model.save_pretrained(tmp_path)
    loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, dtype=dtype)
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{method}: {k} changed in save -> load"
    assert loaded.config.quantization_config == model.config.quantization_config
    assert torch.equal(_logits(loaded, enc), _logits(model, enc))


def test_from_pretrained_methods(tmp_path, spm_dir):
    import shutil

    _build(dtype=torch.float32).save_pretrained(tmp_path)
    shutil.copyfile(spm_dir / "sentencepiece.bpe.model", tmp_path / "sentencepiece.bpe.model")
    a = XLMRobertaXLForMaskedLM.from_pretrained(
        tmp_path, quantization="int4", quantization_method="mse", quantization_options={"grid": 3}
    )
    b = quantize(XLMRobertaXLForMaskedLM.from_pretrained(tmp_path), method="mse", grid=3)
    assert a.config.quantization_config == b.config.quantization_config
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # gptq: the tokenizer is found beside the checkpoint; calibration as a file
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(CALIB[:16]) + "\n\n", encoding="utf-8")
    g = XLMRobertaXLForMaskedLM.from_pretrained(
        tmp_path,
        quantization="int4",
        quantization_method="gptq",
        quantization_options={"calibration": str(calib), "params": "rtn"},
    )
    assert g.config.quantization_config["method"] == "gptq"
    assert g.config.quantization_config["method_options"]["calibration_texts"] == 16
    assert sum(isinstance(m, QuantLinear) for m in g.modules()) == 12
    with pytest.raises(ValueError, match="need quantization='int4'"):
        XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, quantization_method="mse")


def test_bad_calibration_and_options(tmp_path, tok):
    model = _build()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    cases = [
        (FileNotFoundError, r"calibration file '.*missing\.txt' does not exist", str(tmp_path / "missing.txt")),
        (ValueError, r"calibration file '.*empty\.txt' holds no text", str(empty)),
        (ValueError, "calibration list is empty", []),
        (ValueError, "calibration list is empty", ["", "  "]),
        (TypeError, "calibration list item 1 is a int", ["a text", 3]),
        (ValueError, "needs calibration texts", None),
    ]
    for exc, match, calib in cases:
        with pytest.raises(exc, match=match):
            quantize(model, method="gptq", calibration=calib, tokenizer=tok)
    with pytest.raises(ValueError, match="need the model's tokenizer.*pass tokenizer="):
        quantize(model, method="gptq", calibration=["a text"])
    with pytest.raises(ValueError, match="method 'int3' is not supported"):
        quantize(model, method="int3")
    with pytest.raises(TypeError, match=r"takes no option\(s\) \['percdamp'\]"):
        quantize(model, method="mse", percdamp=0.1)
    assert not any(isinstance(m, QuantLinear) for m in model.modules()), "a failed quantize leaves the model as is"
    with pytest.raises(FileNotFoundError, match="calibration file"):
        XLMRobertaXLForMaskedLM.from_pretrained(
            _saved(tmp_path, model),
            quantization="int4",
            quantization_method="gptq",
            quantization_options={"calibration": str(tmp_path / "nope.txt")},
        )


def _saved(tmp_path, model):
    d = tmp_path / "ckpt"
    model.save_pretrained(d)
    return d


def test_memory_report_xl_xxl():
    xl, xxl = int4_memory_report("xl"), int4_memory_report("xxl")
    H, L, inter = 4096, 48, 16384
    n_lin = L * (4 * H * H + 2 * H * inter)
    assert xxl["int4_weight_bytes"] == n_lin // 2 and xxl["int4_linears"] == 6 * L
    assert xxl["scales_zeros_bytes"] == n_lin // 128 * 2 * 2
    assert xxl["embedding_bytes"] == (250880 + 514 + 1) * H * 2
    assert xxl["total_bytes"] < 8e9, f"XXL int4 total {xxl['total_bytes'] / 1e9:.2f} GB (target < 8 GB)"
    assert xl["total_bytes"] < xxl["total_bytes"] < xxl["bf16_total_bytes"]
    heads = int4_memory_report("xxl", include_lm_head=True)
    assert heads["int4_linears"] == 6 * L + 2


def test_cli_quantize_methods_and_info(tmp_path, spm_dir, capsys):
    import shutil

    from xlmrxl.cli import main

    src = tmp_path / "src"
    _build(dtype=torch.float32).save_pretrained(src)
    shutil.copyfile(spm_dir / "sentencepiece.bpe.model", src / "sentencepiece.bpe.model")
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(CALIB[:12]) + "\n", encoding="utf-8")
    assert main(["quantize", str(src), str(tmp_path / "g"), "--method", "gptq", "--calibration", str(calib)]) == 0
    out = capsys.readouterr().out
    assert "quality (gptq): mean relative weight error 0.1" in out, out
    assert "cosine mean 0.99" in out and "on the 12 calibration texts" in out, out
    assert "XXL int4 g128: 7." in out, out
    loaded = XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "g")
    assert loaded.config.quantization_config["method"] == "gptq"
    assert main(["quantize", str(src), str(tmp_path / "m"), "--method", "mse"]) == 0
    out = capsys.readouterr().out
    assert "quality (mse): mean relative weight error 0.09" in out and "cosine" not in out, out
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert main(["quantize", str(src), str(tmp_path / "x"), "--method", "gptq", "--calibration", str(empty)]) == 1
    assert "empty.txt' holds no text" in capsys.readouterr().err
    assert main(["quantize", str(src), str(tmp_path / "y"), "--method", "gptq"]) == 1
    assert "needs calibration texts" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "int4 size    THIS MODEL int4 g128:" in out and "XL int4 g128: 2." in out, out
