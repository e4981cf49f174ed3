"""xlmrxl.pipeline input validation: an input list holding something other than a string names its index and type."""

import pytest
import torch
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.tokenizer import XLMRobertaTokenizer


@pytest.fixture(scope="module")
def ckpt(spm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_mlm_inputs")
    tok = XLMRobertaTokenizer.from_pretrained(spm_dir)
    model = xlmrxl.XLMRobertaXLForMaskedLM(xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(vocab_size=len(tok))))
    model.eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
@pytest.mark.parametrize(
    "inputs, index, type_name",
    [
        (["a <mask>", None], 1, "NoneType"),
        ([None], 0, "NoneType"),
        (("a <mask>", "b <mask>", 3), 2, "int"),
        (["a <mask>", ["nested <mask>"]], 1, "list"),
        (["a <mask>", b"bytes <mask>"], 1, "bytes"),
    ],
)
def test_non_string_input_is_named(ckpt, task, inputs, index, type_name):
    pipe = xlmrxl.pipeline(task, model=str(ckpt), device="cpu")
    with pytest.raises(TypeError, match=rf"inputs\[{index}\] is {type_name}\b.*not a string") as info:
        pipe(inputs)
    assert "got list" not in str(info.value) and "got tuple" not in str(info.value)


def test_good_inputs_still_run(ckpt):
    pipe = xlmrxl.pipeline("fill-mask", model=str(ckpt), device="cpu")
    out = pipe(["a <mask>", "b <mask>"], top_k=2)
    assert len(out) == 2 and all(len(r) == 2 for r in out)
    with pytest.raises(TypeError, match="got int"):
        pipe(7)
    feats = xlmrxl.pipeline("feature-extraction", model=str(ckpt), device="cpu")(("x", "y"), pooling="mean")
    assert isinstance(feats, torch.Tensor) and feats.shape[0] == 2
