"""Progress on long quantize work: a bar per layer on stderr for rtn / mse (while loading and in place) and GPTQ,
forced with ``progress=True``, ``xlmrxl quantize --progress`` or ``XLMRXL_PROGRESS=on``, and none with ``--quiet``
or when stderr is not a terminal."""

import re

import pytest
from test_pipelines import make_checkpoint

import xlmrxl
from xlmrxl.cli import main
from xlmrxl_kernels import env


@pytest.fixture(scope="module")
def src(spm_dir, tmp_path_factory):
    return make_checkpoint(
        tmp_path_factory.mktemp("qp_src"), spm_dir, hidden_size=128, num_attention_heads=2, intermediate_size=256
    )


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    f = tmp_path_factory.mktemp("qp_calib") / "texts.txt"
    f.write_text("\n".join(f"calibration sentence number {i} about the weather" for i in range(12)) + "\n")
    return f


def _bar_done(err: str, method: str, layers: int = 3) -> bool:
    return re.search(rf"xlmrxl quantize {method}: 100%.*{layers}/{layers} \[", err) is not None


@pytest.mark.parametrize("method", ["rtn", "mse", "gptq"])
def test_cli_quantize_progress(src, calib, tmp_path, capsys, method):
    argv = ["quantize", str(src), str(tmp_path / "q"), "--method", method, "--dtype", "float32", "--device", "cpu"]
    if method == "gptq":
        argv += ["--calibration", str(calib)]
    assert main(argv + ["--progress"]) == 0
    err = capsys.readouterr().err
    assert _bar_done(err, method), err[-2000:]
    assert main(argv + ["--quiet"]) == 0 and "xlmrxl quantize" not in capsys.readouterr().err
    assert main(argv) == 0 and "xlmrxl quantize" not in capsys.readouterr().err  # stderr is not a terminal


def test_progress_env_and_in_place_quantize(src, capsys, monkeypatch):
    monkeypatch.setenv("XLMRXL_PROGRESS", "on")
    env.refresh()
    model = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(str(src))
    xlmrxl.quantize(model, method="mse")
    assert _bar_done(capsys.readouterr().err, "mse")
    model = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(str(src))
    xlmrxl.quantize(model, method="rtn", progress=False)
    assert "xlmrxl quantize" not in capsys.readouterr().err
