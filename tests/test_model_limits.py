"""Issue 18's size and config items: the parameter estimate from a config, absurd sizes refused before anything is
allocated (never XXL on a GPU because the host is smaller), ``pad_token_id: null`` and ``my-key`` config keys."""

import json
import time

import pytest
import torch
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import sizing
from xlmrxl.memory import SIZES
from xlmrxl.sizing import check_fits, estimate_bytes, estimate_parameters

GiB = 1 << 30


def _cfg(**kw):
    return xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(**kw))


# -- the estimate -------------------------------------------------------------------------------------------------
def test_estimate_xl_xxl():
    xl = estimate_parameters(xlmrxl.XLMRobertaXLConfig(**SIZES["xl"]))
    xxl = estimate_parameters(xlmrxl.XLMRobertaXLConfig(**SIZES["xxl"]))
    assert 3.4e9 < xl < 3.6e9 and 10.6e9 < xxl < 10.8e9
    assert estimate_bytes(xlmrxl.XLMRobertaXLConfig(**SIZES["xxl"]), torch.bfloat16) == 2 * xxl


@pytest.mark.parametrize(
    "kw", [{}, {"tie_word_embeddings": False}, {"is_decoder": True, "add_cross_attention": True}, SIZES["xl"]]
)
def test_estimate_equals_the_built_model(kw):
    cfg = _cfg(**kw)
    with torch.device("meta"):
        m = xlmrxl.XLMRobertaXLForMaskedLM(cfg)
    assert estimate_parameters(cfg) == sum(p.numel() for p in m.parameters())


def test_int4_estimate_is_smaller():
    cfg = xlmrxl.XLMRobertaXLConfig(**SIZES["xxl"])
    full, int4 = estimate_bytes(cfg, torch.bfloat16), estimate_bytes(cfg, torch.bfloat16, int4_group=128)
    assert int4 < 0.45 * full


# -- absurd sizes --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, words",
    [
        ({"num_hidden_layers": 10**12}, "num_hidden_layers=1000000000000"),
        ({"hidden_size": 10**12}, "hidden_size=1000000000000"),
        ({"intermediate_size": 10**12, "hidden_size": 2**20}, "more than this host's RAM"),
    ],
)
def test_absurd_sizes_are_refused_before_allocation(kw, words):
    cfg = _cfg(**kw)
    t = time.perf_counter()
    for cls in (xlmrxl.XLMRobertaXLForMaskedLM, xlmrxl.XLMRobertaXLModel):
        with pytest.raises(ValueError, match=words) as exc:
            cls(cfg)
        assert "Storage size" not in str(exc.value) and "XL: hidden_size=2560" in str(exc.value)
    assert time.perf_counter() - t < 5


def test_absurd_sizes_refused_by_from_pretrained(tmp_path):
    xlmrxl.XLMRobertaXLForMaskedLM(_cfg()).save_pretrained(tmp_path)
    for override in ({"num_hidden_layers": 10**12}, {"hidden_size": 10**12}):
        with pytest.raises(ValueError, match="cannot be built"):
            xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path, **override)
    from safetensors.torch import load_file, save_file

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 10**12
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    weights = str(tmp_path / "model.safetensors")  # re-written without the saved config's digest: the edit loads
    save_file(load_file(weights), weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="num_hidden_layers=1000000000000"):
        xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path)


def test_device_memory_is_the_target_devices(monkeypatch):
    """XXL (21 GiB in bf16) on an 80 GiB GPU is never refused because the host has 16 GiB; on the host it is."""
    xxl = xlmrxl.XLMRobertaXLConfig(**SIZES["xxl"])
    monkeypatch.setattr(sizing, "_host_memory", lambda: 16 * GiB)
    monkeypatch.setattr(sizing, "device_memory", lambda d: {"cuda": 80 * GiB, "cpu": 16 * GiB}.get(d.type))
    check_fits(xxl, "cuda", torch.bfloat16)
    check_fits(xxl, "cuda:0", torch.float32)  # 43 GiB < 80 GiB
    check_fits(xxl, "meta", torch.float32)  # meta is never refused for its bytes
    with pytest.raises(ValueError, match="more than this host's RAM"):
        check_fits(xxl, "cpu", torch.bfloat16)
    check_fits(xxl, "cpu", torch.bfloat16, int4_group=128)  # 7 GiB with int4 linears
    monkeypatch.setattr(sizing, "device_memory", lambda d: 16 * GiB)
    with pytest.raises(ValueError, match="the GPU cuda"):
        check_fits(xxl, "cuda", torch.bfloat16)


def test_xxl_on_meta_is_built():
    with torch.device("meta"):
        m = xlmrxl.XLMRobertaXLModel(xlmrxl.XLMRobertaXLConfig(**SIZES["xxl"]), add_pooling_layer=False)
    assert sum(p.numel() for p in m.parameters()) > 10e9


def test_real_device_memory_is_known():
    assert sizing.device_memory("cpu") > GiB
    assert sizing.device_memory("meta") is None


# -- config values ----------------------------------------------------------------------------------------------
def test_pad_token_id_null_is_a_clear_error():
    m = xlmrxl.XLMRobertaXLModel(_cfg(pad_token_id=None)).eval()
    ids = torch.tensor([[0, 5, 6, 2]])
    with pytest.raises(ValueError, match="pad_token_id is None.*set pad_token_id"):
        m(ids)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        m(inputs_embeds=torch.randn(1, 4, 64))
    out = m(ids, position_ids=torch.tensor([[2, 3, 4, 5]]))  # positions given: nothing to count
    assert out.last_hidden_state.shape == (1, 4, 64)


def test_config_keys_like_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    extra = {"my-key": 3, "with space": [1, 2], "ünï": "x"}
    c = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(), **extra)
    assert getattr(c, "my-key") == 3 and c.to_dict()["with space"] == [1, 2]
    c.save_pretrained(tmp_path)
    back = xlmrxl.XLMRobertaXLConfig.from_pretrained(tmp_path)
    theirs = transformers.XLMRobertaXLConfig.from_pretrained(tmp_path)
    for k, v in extra.items():
        assert getattr(back, k) == v and getattr(theirs, k) == v
    for bad in ("to_dict", "__class__", ""):
        with pytest.raises(ValueError, match="cannot be set"):
            xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(), **{bad: 1})
