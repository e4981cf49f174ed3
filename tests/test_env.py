"""xlmrxl_kernels.env: one strict parser of every XLMRXL_* switch, read once and cached."""

import logging

import pytest

from xlmrxl_kernels import env


@pytest.fixture(autouse=True)
def _fresh():
    env.refresh()
    yield
    env.refresh()


@pytest.mark.parametrize(
    "name,raw,value",
    [
        ("XLMRXL_CUDA_GRAPHS", None, "auto"),
        ("XLMRXL_CUDA_GRAPHS", " Emulate ", "emulate"),
        ("XLMRXL_CUDA_GRAPHS", "1", "on"),
        ("XLMRXL_CUDA_GRAPHS", "false", "off"),
        ("XLMRXL_TUNING", "", "on"),
        ("XLMRXL_TUNING", "OFF", "off"),
        ("XLMRXL_BACKEND", "Triton", "triton"),
        ("XLMRXL_POISON", "yes", True),
        ("XLMRXL_POISON", "0", False),
        ("XLMRXL_DISABLE_KERNELS", "attention, linear_gelu", frozenset({"attention", "linear_gelu"})),
        ("XLMRXL_DISABLE_KERNELS", "", frozenset()),
        ("XLMRXL_TUNING_CACHE", " /tmp/x.json ", "/tmp/x.json"),
    ],
)
def test_values(name, raw, value):
    assert env.parse(name, raw) == value


@pytest.mark.parametrize(
    "name,raw,allowed",
    [
        ("XLMRXL_CUDA_GRAPHS", "maybe", "auto, on, off, emulate"),
        ("XLMRXL_TUNING", "fast", "on, off"),
        ("XLMRXL_POISON", "2", "1, 0, true, false"),
        ("XLMRXL_BACKEND", "cuda", "auto, triton, reference"),
        ("XLMRXL_DISABLE_KERNELS", "attention,gemm", "comma-separated list of add_layernorm"),
    ],
)
def test_unknown_values_name_the_variable_and_the_allowed_values(name, raw, allowed, monkeypatch):
    with pytest.raises(env.EnvError) as exc:
        env.parse(name, raw)
    assert name in str(exc.value) and repr(raw) in str(exc.value) and allowed in str(exc.value)
    assert isinstance(exc.value, ValueError)
    monkeypatch.setenv(name, raw)
    with pytest.raises(env.EnvError):
        env.get(name)


def test_read_once_then_cached(monkeypatch):
    monkeypatch.setenv("XLMRXL_CUDA_GRAPHS", "off")
    assert env.get("XLMRXL_CUDA_GRAPHS") == "off"
    monkeypatch.setenv("XLMRXL_CUDA_GRAPHS", "on")
    assert env.get("XLMRXL_CUDA_GRAPHS") == "off", "cached: the hot path never reads os.environ"
    env.refresh()
    assert env.get("XLMRXL_CUDA_GRAPHS") == "on"


def test_check_all_warns_about_unknown_names(monkeypatch, caplog):
    monkeypatch.setenv("XLMRXL_TUNNING", "off")
    with caplog.at_level(logging.WARNING, logger="xlmrxl_kernels"):
        values = env.check_all()
        env.check_all()
    assert values["XLMRXL_TUNING"] in ("on", "off")
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "XLMRXL_TUNNING" in caplog.text
    with pytest.raises(KeyError, match="not an xlmrxl environment variable"):
        env.get("XLMRXL_NOPE")
