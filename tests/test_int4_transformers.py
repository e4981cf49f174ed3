"""int4 checkpoints under transformers (issue 18): ``xlmrxl quantize`` writes a ``quantization_config`` that
transformers refuses (no ``quant_method``: a ValueError before any weight is read) instead of loading the checkpoint
with randomly initialised linear layers; xlmrxl still loads it (and the records written before, with
``quant_method: "xlmrxl_int4"``). A ``quantization_config`` that is not xlmrxl's record, and bad group sizes, get
messages naming the value and the fix."""

import json
import logging

import pytest
import torch
from _oracle import make_inputs, random_model
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.cli import main
from xlmrxl.quantization import QuantLinear, checkpoint_record, quantize

transformers = pytest.importorskip("transformers")


def _cfg():
    return xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(hidden_size=128, intermediate_size=256))


def _int4_dir(tmp_path, name="int4", **save):
    m = quantize(random_model(xlmrxl.XLMRobertaXLForMaskedLM, _cfg()))
    m.save_pretrained(tmp_path / name, **save)
    return tmp_path / name, m


def _edit_config(d, edit):
    """Edit ``d/config.json`` as a user would, and drop the digest of the saved config that xlmrxl records in the
    weights' metadata (the weights re-written as a plain transformers-style file), so the edit itself is loaded."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(load_file(str(d / "model.safetensors")), str(d / "model.safetensors"), metadata={"format": "pt"})


def _refused_by_transformers(d):
    for load in (transformers.AutoModelForMaskedLM, transformers.XLMRobertaXLForMaskedLM, transformers.AutoModel):
        with pytest.raises(ValueError, match="quant_method"):
            load.from_pretrained(d)


def test_cli_quantize_output_is_refused_by_transformers_and_loads_in_xlmrxl(tmp_path):
    src = tmp_path / "src"
    random_model(xlmrxl.XLMRobertaXLForMaskedLM, _cfg()).save_pretrained(src)
    dst = tmp_path / "int4"
    assert main(["quantize", str(src), str(dst), "--dtype", "float32", "--device", "cpu"]) == 0
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert "quant_method" not in qc and qc["format"] == "xlmrxl_int4" and "xlmrxl" in qc["loader"]
    _refused_by_transformers(dst)
    ours = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(dst, backend="reference")
    assert sum(isinstance(m, QuantLinear) for m in ours.modules()) == 3 * 6


@pytest.mark.parametrize("sharded", [False, True])
def test_int4_save_is_refused_by_transformers(tmp_path, sharded):
    d, m = _int4_dir(tmp_path, max_shard_size="40KB" if sharded else "50GB")
    assert (d / "model.safetensors.index.json").is_file() == sharded
    _refused_by_transformers(d)
    inputs = make_inputs(m.config, seed=5)
    back = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(d, backend="reference")
    with torch.no_grad():
        assert torch.equal(back(**inputs).logits, m(**inputs).logits)


def test_accelerated_transformers_int4_save_is_refused_by_transformers(tmp_path):
    cfg = transformers.XLMRobertaXLConfig(**tiny_config_kwargs(hidden_size=128, intermediate_size=256))
    hf = random_model(transformers.XLMRobertaXLForMaskedLM, cfg)
    xlmrxl.accelerate(hf, backend="reference", quantization="int4")
    hf.save_pretrained(tmp_path / "hf-int4")
    _refused_by_transformers(tmp_path / "hf-int4")
    back = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "hf-int4", backend="reference")
    assert sum(isinstance(m, QuantLinear) for m in back.modules()) == 3 * 6


def test_records_written_before_still_load(tmp_path):
    d, m = _int4_dir(tmp_path)

    def old_record(cfg):
        qc = cfg["quantization_config"]
        qc.pop("format"), qc.pop("loader")
        qc["quant_method"] = "xlmrxl_int4"  # the record as xlmrxl wrote it before issue 18

    _edit_config(d, old_record)
    back = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(d, backend="reference")
    sd = m.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items())


@pytest.mark.parametrize(
    "bogus, words",
    [
        ({}, "no format"),
        ({"bogus": 1}, "no format"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "quant_method='gptq'"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "another tool"),
        ("int4", "not xlmrxl's int4 record"),
        ([1, 2], "not xlmrxl's int4 record"),
        ({"format": "xlmrxl_int4", "colour": "red"}, "unknown key"),
        ({"format": "xlmrxl_int4", "bits": 8}, "bits=8"),
        ({"format": "xlmrxl_int4", "group_size": 0}, "group_size=0"),
        ({"format": "xlmrxl_int4", "modules": "all"}, "modules='all'"),
    ],
)
def test_bogus_quantization_config_gets_a_clear_message(tmp_path, bogus, words):
    d, _ = _int4_dir(tmp_path)
    _edit_config(d, lambda cfg: cfg.__setitem__("quantization_config", bogus))
    with pytest.raises(ValueError, match=words) as exc:
        xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(d, backend="reference")
    assert "multiple of" not in str(exc.value) and "QuantLinear" not in str(exc.value)  # not a group-size message
    with pytest.raises(ValueError):
        checkpoint_record(bogus)


@pytest.mark.parametrize("group_size", [0, -128, 3, 1.5, True, "128"])
def test_quantize_bad_group_size_is_a_clear_error(group_size):
    m = random_model(xlmrxl.XLMRobertaXLForMaskedLM, _cfg())
    with pytest.raises(ValueError, match=f"group_size={group_size!r}.*even integer"):
        quantize(m, group_size=group_size)
    assert not any(isinstance(x, QuantLinear) for x in m.modules())


def test_cli_quantize_group_size_zero(tmp_path, caplog, capsys):
    src = tmp_path / "src"
    random_model(xlmrxl.XLMRobertaXLForMaskedLM, _cfg()).save_pretrained(src)
    with caplog.at_level(logging.ERROR):
        rc = main(["quantize", str(src), str(tmp_path / "out"), "--group-size", "0", "--device", "cpu"])
    assert rc != 0
    text = capsys.readouterr().err + caplog.text
    assert "group-size 0" in text and "ZeroDivision" not in text
