"""The one choice (xlmrxl_kernels.tuning) over the op table (xlmrxl_kernels.table).

Candidates: each one that runs on CPU gives the reference's result on tiny shapes (Triton under the interpreter).
Dispatcher: fake timings through an injected timer on CPU tensors: it picks the fastest, caches in memory and on
disk (a second tuner reads the choice back without timing), respects XLMRXL_TUNING=off, never times inside capture,
uses the shipped defaults, drops a candidate that raises, and logs a measured choice once."""

import json
import logging

import pytest
import torch

from xlmrxl_kernels import env, tuning
from xlmrxl_kernels import reasons as W
from xlmrxl_kernels import reference as R
from xlmrxl_kernels import table as C


def _linear_args():
    return torch.randn(5, 16), torch.randn(12, 16), torch.randn(12)


def _calls():
    x, w, b = _linear_args()
    q = torch.randn(2, 3, 5, 16)
    k = torch.randn(2, 3, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1] = False  # a fully masked row returns zeros
    cu = torch.tensor([0, 2, 2, 7], dtype=torch.int32)
    qp = torch.randn(7, 3, 16)
    qw, s, z = R.quantize_int4_ref(torch.randn(12, 64), 32)
    return {
        "linear_gelu": ((x, w, b), {}),
        "linear_residual": ((x, w, b, torch.randn(5, 12)), {}),
        "add_layernorm": ((x, torch.randn(5, 16), torch.randn(16), torch.randn(16), 1e-5), {}),
        "attention": ((q, k, k.clone(), mask), {}),
        "attention_varlen": ((qp, qp, qp, cu, cu, 5, 5), {"causal": True}),
        "int4_matmul": ((torch.randn(3, 64), qw, s, z, 32, torch.randn(12), "gelu"), {}),
    }


def _ref(op, args, kwargs):
    fn = getattr(R, f"{op}_ref")
    if op in ("linear_gelu", "linear_residual", "int4_matmul"):
        kwargs = {**kwargs, "upcast": True}
    return fn(*args, **kwargs)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_cpu_candidate_matches_the_reference(dtype):
    ran = set()
    for op, (args, kwargs) in _calls().items():
        args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        want = _ref(op, args, kwargs)
        for cand in tuning.candidates(op):
            if cand.reasons(torch.device("cpu"), args, kwargs):
                continue
            got = cand.fn(*args, **kwargs)
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                assert g.shape == w.shape and g.dtype == w.dtype, (op, cand.name, g.shape, w.shape, g.dtype)
                tol = 1e-12 if dtype == torch.float64 else 2e-5
                err = (g - w).abs().max().item()
                assert err <= tol, f"{op} / {cand.name} ({dtype}): max error {err:.3g} > {tol}"
            ran.add((op, cand.name))
    if dtype == torch.float32:  # under the interpreter Triton takes every fp32 call
        assert {op for op, name in ran if name == "triton"} == set(_calls())
    assert {(op, n) for op, n in ran if n != "triton"} >= {
        ("linear_gelu", "cublas"),
        ("linear_residual", "cublas"),
        ("linear_residual", "cublas-addmm"),
        ("add_layernorm", "torch"),
        ("attention", "sdpa"),
        ("int4_matmul", "dequant-cublas"),
    }


def test_candidate_lists_and_reasons():
    names = {op: [c.name for c in cands] for op, cands in tuning.candidates().items()}
    assert all(n[0] == "triton" and n[-1] == "reference" for n in names.values()), names
    assert "sdpa-seq" in names["attention_varlen"] and "sdpa-causal" in names["attention"]
    assert "flash-varlen" in names["attention_varlen"] and "sdpa" in names["attention"]
    q = torch.randn(1, 2, 3, 16)
    sdpa = next(c for c in tuning.candidates("attention") if c.name == "sdpa")
    assert (
        "top-left"
        in sdpa.reasons(q.device, (q, torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)), {"causal": True})[0]
    )
    flash = next(c for c in tuning.candidates("attention_varlen") if c.name == "flash-varlen")
    assert "CUDA only" in flash.reasons(torch.device("cpu"), (), {})[0]


class _FakeTimer:
    def __init__(self, ms: dict):
        self.ms = ms
        self.calls = []

    def __call__(self, fn, args, kwargs):
        name = next(n for n, c in self.names.items() if c.fn is fn)
        self.calls.append(name)
        if self.ms[name] is None:
            raise RuntimeError("no kernel for this shape")
        return self.ms[name]


def _tuner(tmp_path, ms, **kw):
    timer = _FakeTimer(ms)
    t = tuning.Tuner(timer=timer, cache_path=tmp_path / "tuning.json", measure_devices=("cpu",), **kw)
    # the interpreter is off for this test's choice: Triton is "not CUDA" on CPU, so only the torch candidates
    # remain; give the timer the names it reports
    timer.names = {c.name: c for c in t.table["linear_residual"]}
    return t, timer


def _residual_args():
    x, w, b = _linear_args()
    return (x, w, b, torch.randn(5, 12))


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.setattr(C, "interpreting", lambda: False)


def test_picks_the_fastest_and_caches_in_memory_and_on_disk(tmp_path, no_interpreter, caplog):
    t, timer = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": 0.2})
    args = _residual_args()
    with caplog.at_level(logging.INFO, logger="xlmrxl_kernels"):
        c = t.choose("linear_residual", args)
    assert (c.name, c.source) == ("cublas-addmm", "measured") and sorted(timer.calls) == ["cublas", "cublas-addmm"]
    assert c.reasons["cublas"].code == W.SLOWER and "0.5000 ms" in c.reasons["cublas"]
    assert c.why_not_triton.code == W.DEVICE and "CUDA" in c.why_not_triton
    assert sum("linear_residual" in r.getMessage() and "cublas-addmm" in r.getMessage() for r in caplog.records) == 1
    torch.testing.assert_close(c(*args), R.linear_residual_ref(*args))
    # same bucket (M 5 -> 8 rows), no new timing
    x6 = torch.randn(7, 16)
    assert t.choose("linear_residual", (x6, *args[1:3], torch.randn(7, 12))) is c and len(timer.calls) == 2
    # the disk cache: keyed by device and versions, read back by a fresh tuner without timing
    data = json.loads((tmp_path / "tuning.json").read_text())
    ((ctx, recs),) = data["entries"].items()
    assert ctx.startswith("cpu|torch=") and "triton=" in ctx and f"xlmrxl_kernels={tuning.VERSION}" in ctx
    assert recs["linear_residual|8|12|16|float32|float32|float32|float32"]["choice"] == "cublas-addmm"
    t2, timer2 = _tuner(tmp_path, {"cublas": 0.1, "cublas-addmm": 9.0})
    c2 = t2.choose("linear_residual", args)
    assert (c2.name, c2.source, timer2.calls) == ("cublas-addmm", "disk", [])
    # another bucket is measured afresh
    c3 = t2.choose("linear_residual", (torch.randn(40, 16), *args[1:3], torch.randn(40, 12)))
    assert (c3.name, c3.source) == ("cublas", "measured")


def test_tuning_off_uses_fixed_defaults(tmp_path, no_interpreter, monkeypatch):
    monkeypatch.setenv("XLMRXL_TUNING", "off")
    env.refresh()
    try:
        t, timer = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": 0.2})
        c = t.choose("linear_residual", _residual_args())
        assert (c.name, c.source, timer.calls) == ("cublas", "default", [])
        assert c.reasons["cublas-addmm"].code == W.TUNING_OFF
        assert not (tmp_path / "tuning.json").exists()
        # shipped defaults apply when tuning is off (or cannot run)
        shipped = {"cpu": {"linear_residual|8|12|16|float32|float32|float32|float32": "cublas-addmm"}}
        t2, _ = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": 0.2}, defaults=shipped)
        c2 = t2.choose("linear_residual", _residual_args())
        assert (c2.name, c2.source) == ("cublas-addmm", "tuned_defaults")
        monkeypatch.setenv("XLMRXL_TUNING", "sometimes")
        env.refresh()
        with pytest.raises(env.EnvError, match=r"XLMRXL_TUNING='sometimes'.*on, off"):
            _tuner(tmp_path, {})[0].choose("linear_residual", _residual_args())
    finally:
        monkeypatch.delenv("XLMRXL_TUNING")
        env.refresh()


def test_never_times_inside_capture(tmp_path, no_interpreter, monkeypatch):
    monkeypatch.setattr(tuning, "_capturing", lambda device: True)
    t, timer = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": 0.2})
    c = t.choose("linear_residual", _residual_args())
    assert timer.calls == [] and (c.name, c.source) == ("cublas", "capture")
    assert c.reasons["cublas-addmm"].code == W.CAPTURE
    monkeypatch.setattr(tuning, "_capturing", lambda device: False)
    t.clear_memory()
    assert t.choose("linear_residual", _residual_args()).source == "measured"
    monkeypatch.setattr(tuning, "_capturing", lambda device: True)
    t3, timer3 = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": 0.2})
    assert t3.choose("linear_residual", _residual_args()).source == "disk"  # a cached choice is fine in capture
    assert timer3.calls == []


def test_a_failing_candidate_is_dropped(tmp_path, no_interpreter):
    t, timer = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": None})
    c = t.choose("linear_residual", _residual_args())
    assert c.name == "cublas" and c.reasons["cublas-addmm"].code == W.MEASURE_FAILED


def test_no_candidate_falls_back_to_the_reference(tmp_path, no_interpreter):
    t, _ = _tuner(tmp_path, {})
    x = torch.randn(2, 8)
    args = (x.to(torch.int32), torch.randn(4, 8), None, torch.randn(2, 4))
    c = t.choose("linear_residual", args)
    assert c.source == "fallback" and c.name == "reference" and c.reasons["*"].code == W.NO_CANDIDATE


def test_disabled_kernels_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("XLMRXL_DISABLE_KERNELS", "linear_residual")
    env.refresh()
    monkeypatch.setattr(C, "interpreting", lambda: True)
    try:
        t, _ = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": 0.2})
        c = t.choose("linear_residual", _residual_args())
        assert c.why_not_triton.code == W.DISABLED
        monkeypatch.setenv("XLMRXL_DISABLE_KERNELS", "linear_residual,attenton")
        env.refresh()
        with pytest.raises(env.EnvError, match="attenton"):
            env.get("XLMRXL_DISABLE_KERNELS")
    finally:
        monkeypatch.delenv("XLMRXL_DISABLE_KERNELS")
        env.refresh()


def test_shape_keys_bucket_token_counts():
    x, w, b = _linear_args()
    f32 = torch.float32
    assert tuning.shape_key("linear_gelu", (x, w, b)) == (8, 12, 16, f32, f32, f32)
    assert tuning.shape_key("linear_gelu", (torch.randn(3, 3, 16), w, None)) == (16, 12, 16, f32, f32)
    assert tuning.shape_key("linear_gelu", (x.double(), w, b))[-3:] == (torch.float64, f32, f32)
    with pytest.raises(KeyError, match="unknown op"):
        tuning.shape_key("conv", (x,))


def test_merge_ships_measured_choices(tmp_path, no_interpreter):
    t, _ = _tuner(tmp_path, {"cublas": 0.5, "cublas-addmm": 0.2})
    t.choose("linear_residual", _residual_args())
    import pathlib

    defaults = tmp_path / "tuned_defaults.py"
    defaults.write_text((pathlib.Path(tuning.__file__).with_name("tuned_defaults.py")).read_text())
    assert tuning.main(["merge", str(tmp_path / "tuning.json"), "--defaults", str(defaults)]) == 0
    ns = {}
    exec(defaults.read_text(), ns)
    assert ns["TUNED_DEFAULTS"] == {"cpu": {"linear_residual|8|12|16|float32|float32|float32|float32": "cublas-addmm"}}
    # a cold tuner with those defaults and tuning off picks them
    t2 = tuning.Tuner(
        mode="off", defaults=ns["TUNED_DEFAULTS"], cache_path=tmp_path / "none.json", measure_devices=("cpu",)
    )
    assert t2.choose("linear_residual", _residual_args()).source == "tuned_defaults"


# ---- on a GPU: every candidate (SDPA backends, flash varlen, cuBLAS) against the reference; real timings -------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_cuda_candidate_matches_the_reference_gpu(dtype, tmp_path):
    ran = []
    for op, (args, kwargs) in _calls().items():
        args = tuple(
            (a.to(dtype) if a.is_floating_point() else a).cuda() if isinstance(a, torch.Tensor) else a for a in args
        )
        want = _ref(op, tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                              for a in args), kwargs)  # fmt: skip
        for cand in tuning.candidates(op):
            if cand.reasons(torch.device("cuda"), args, kwargs):
                continue
            try:
                got = cand.fn(*args, **kwargs)
            except RuntimeError:
                if cand.name.startswith("sdpa-"):  # a forced SDPA backend may reject the input: tuning drops it
                    continue
                raise
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                assert g.shape == w.shape and g.dtype == dtype, (op, cand.name)
                err = (g.float() - w.float()).abs().max().item()
                assert err <= 0.1, f"{op} / {cand.name} ({dtype}): max error {err:.3g}"
            ran.append((op, cand.name))
    assert ("attention_varlen", "triton") in ran and ("linear_gelu", "cublas") in ran, ran
    # the real timer picks something and writes it to disk
    t = tuning.Tuner(cache_path=tmp_path / "t.json")
    x = torch.randn(64, 256, device="cuda", dtype=dtype)
    w = torch.randn(512, 256, device="cuda", dtype=dtype)
    c = t.choose("linear_gelu", (x, w, None))
    assert c.source == "measured" and set(c.timings_ms) >= {"triton", "cublas"}
    assert (tmp_path / "t.json").exists()
