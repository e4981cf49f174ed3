"""xlmrxl_kernels._utils: environment flags, the launcher device decorator, capture-safe autotuned launches.

All CPU: CUDA is mocked where a decision depends on it (a tensor subclass reporting a CUDA device, a patched
``torch.cuda.current_device`` / ``torch.cuda.device``, a patched "is the stream capturing" test)."""

import contextlib
import importlib
import logging

import pytest
import torch
import triton
import triton.language as tl

from xlmrxl_kernels import _utils


class _FakeCuda(torch.Tensor):
    """A CPU tensor that reports ``cuda:<index>`` as its device (class attribute set per test)."""

    index = 1

    @property
    def device(self):
        return torch.device("cuda", type(self).index)


def _fake_cuda(t: torch.Tensor, index: int) -> torch.Tensor:
    cls = type(f"_FakeCuda{index}", (_FakeCuda,), {"index": index})
    return torch.Tensor._make_subclass(cls, t)


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
        (" OFF ", False),
        ("1", True),
        ("true", True),
        ("yes", True),
        ("on", True),
        ("2", True),
    ],
)
def test_env_flag(value, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv("XLMRXL_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("XLMRXL_TEST_FLAG", value)
    assert _utils.env_flag("XLMRXL_TEST_FLAG") is expected, f"env_flag({value!r}) should be {expected}"


def test_flags_use_env_flag(monkeypatch):
    from xlmrxl import backend

    attention = importlib.import_module("xlmrxl_kernels.flash")  # the package exports functions by these names
    cache_update = importlib.import_module("xlmrxl_kernels.kv_cache")

    monkeypatch.setenv("TRITON_INTERPRET", "false")
    _utils.refresh()  # switches are read once and cached
    assert not _utils.interpreting() and not backend._interpreting()
    monkeypatch.setenv("XLMRXL_DEBUG_CHECKS", "no")
    _utils.refresh()
    assert not attention._debug_checks()
    monkeypatch.setenv("XLMRXL_DEBUG_CHECKS", "yes")
    assert not attention._debug_checks(), "read once: a change needs refresh()"
    _utils.refresh()
    assert attention._debug_checks()
    monkeypatch.setenv("XLMRXL_REQUIRE_EXT", "off")
    _utils.refresh()
    assert not cache_update._require_ext()
    monkeypatch.setenv("XLMRXL_POISON", "false")
    _utils.refresh()
    filled = []
    monkeypatch.setattr(torch.Tensor, "fill_", lambda self, v: filled.append(v) or self)
    _utils.empty((2,), dtype=torch.float32, device="cpu")
    assert filled == [], "XLMRXL_POISON=false must not poison outputs"
    monkeypatch.setenv("XLMRXL_POISON", "1")
    _utils.refresh()
    _utils.empty((2,), dtype=torch.float32, device="cpu")
    assert len(filled) == 1
    monkeypatch.undo()
    _utils.refresh()


@pytest.fixture
def cuda_mock(monkeypatch):
    """torch.cuda.current_device() -> 0; torch.cuda.device(i) records i while active."""
    state = {"current": 0, "entered": []}

    @contextlib.contextmanager
    def device(index):
        state["entered"].append(index)
        prev, state["current"] = state["current"], index
        try:
            yield
        finally:
            state["current"] = prev

    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "device", device)
    return state


def test_on_tensor_device_switches_only_when_needed(cuda_mock):
    seen = []

    @_utils.on_tensor_device
    def launcher(x, y=None, *, flag=False):
        """doc"""
        seen.append((cuda_mock["current"], flag))
        return "ran"

    assert launcher.__doc__ == "doc" and launcher.__name__ == "launcher"
    t = torch.randn(2, 3)
    assert launcher(_fake_cuda(t, 1), t, flag=True) == "ran"
    assert cuda_mock["entered"] == [1] and seen[-1] == (1, True), "a tensor on cuda:1 must run with cuda:1 current"
    assert cuda_mock["current"] == 0, "the previous device must be restored"
    launcher(_fake_cuda(t, 0))
    assert cuda_mock["entered"] == [1] and seen[-1] == (0, False), "no switch when the device is already current"
    launcher(t)
    assert cuda_mock["entered"] == [1], "CPU tensors never switch devices"
    launcher(3, _fake_cuda(t, 2))  # the first *tensor* argument decides
    assert cuda_mock["entered"] == [1, 2]


def test_device_switch_matches_on_tensor_device(cuda_mock, monkeypatch):
    """The hot launchers' inlined guard: a context only for another CUDA device, the same error on CPU."""
    t = torch.randn(2, 3)
    assert _utils.device_switch(_fake_cuda(t, 0)) is None, "no switch when the device is already current"
    with _utils.device_switch(_fake_cuda(t, 1)):
        assert cuda_mock["current"] == 1
    assert cuda_mock["current"] == 0 and cuda_mock["entered"] == [1]
    monkeypatch.setattr(_utils, "interpreting", lambda: True)
    assert _utils.device_switch(t) is None, "CPU tensors run under the interpreter"
    monkeypatch.setattr(_utils, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        _utils.device_switch(t)


@triton.jit
def _copy_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    tl.store(Y + offs, tl.load(X + offs, mask=ok), mask=ok)


def _two_config_tuner():
    configs = [triton.Config({"BLOCK": 16}, num_warps=1), triton.Config({"BLOCK": 32}, num_warps=1)]
    tuner = triton.autotune(configs=configs, key=["N"])(_copy_kernel)
    tuner._bench = lambda *args, config, **kwargs: [float(config.kwargs["BLOCK"])] * 3  # no timing runs
    return tuner


def test_tuned_mirrors_the_autotuner_cache_key():
    tuner = _two_config_tuner()
    x = torch.randn(9)
    y = torch.empty(9)
    assert not _utils._tuned(tuner, (x, y, 9), {})
    tuner[(1,)](x, y, 9)  # fills the autotuner's cache for N=9, fp32
    torch.testing.assert_close(y, x)
    assert _utils._tuned(tuner, (x, y, 9), {}), "the key _tuned computes must be the one Triton stored"
    assert not _utils._tuned(tuner, (x, y, 10), {}), "another N is another key"
    assert not _utils._tuned(tuner, (x.double(), y.double(), 9), {}), "dtypes are part of the key"


def test_launch_autotuned_under_capture_runs_default(monkeypatch, caplog):
    tuner = _two_config_tuner()
    calls = []
    tuner._bench = lambda *a, **k: calls.append("bench") or [1.0] * 3
    x = torch.randn(20)
    y = torch.full((20,), float("nan"))
    monkeypatch.setattr(_utils, "_capturing", lambda device: True)
    with caplog.at_level(logging.WARNING, logger="xlmrxl_kernels"):
        _utils.launch_autotuned(tuner, (1,), (x, y, 20), {}, lambda named: tuner.configs[1])
    assert calls == [], "no benchmarking during capture"
    torch.testing.assert_close(y, x)  # BLOCK=32 (the default) covers all 20; BLOCK=16 would leave NaNs
    assert "CUDA-graph capture" in caplog.text and "warm-up" in caplog.text
    monkeypatch.setattr(_utils, "_capturing", lambda device: False)
    _utils.launch_autotuned(tuner, (1,), (x, y, 20), {}, lambda named: tuner.configs[1])
    assert calls == ["bench", "bench"], "outside capture the autotuner tunes as usual"
    monkeypatch.setattr(_utils, "_capturing", lambda device: True)
    calls.clear()
    _utils.launch_autotuned(tuner, (1,), (x, y, 20), {}, lambda named: pytest.fail("tuned key: no default"))
    assert calls == []


def test_num_sms_is_the_single_helper():
    attention = importlib.import_module("xlmrxl_kernels.flash")
    int4 = importlib.import_module("xlmrxl_kernels.int4")
    assert not hasattr(attention, "_num_sms") and not hasattr(_utils, "triton_available")
    assert int4._num_sms(torch.device("cpu")) == 4  # the interpreter's stand-in
