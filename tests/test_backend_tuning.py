"""The measured choice through the model layer (``Backend("auto")`` -> ``xlmrxl_kernels.tuning``) with fake timings,
and the one environment parser (``xlmrxl_kernels.env``) as the model sees it.

CPU never times anything for real: these tests give the process-wide tuner a fake timer and let it treat the CPU as a
measured device (``Tuner(measure_devices=("cpu",))``), so the model runs whatever the fake
timings make fastest (Triton candidates under ``TRITON_INTERPRET=1``, PyTorch ones natively).
"""

import dataclasses

import pytest
import torch
from _oracle import FastPathSpy, make_inputs, random_model
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import env, reasons
from xlmrxl.backend import Backend
from xlmrxl.fast import stack
from xlmrxl_kernels import logs, tuning

TOL = 1e-4  # fp32: Triton (interpreted) vs the PyTorch reference
# fake ms per candidate: the PyTorch candidates beat Triton, addmm loses to plain cuBLAS
FAKE_MS = {"triton": 3.0, "cublas": 1.0, "cublas-addmm": 2.0, "torch": 0.5, "sdpa-seq": 9.0}
MULTI = ("linear_gelu", "linear_residual", "add_layernorm", "attention_varlen")  # several entries on a CPU


class _Fake:
    """A tuner whose timer returns FAKE_MS and whose candidates count their calls."""

    def __init__(self, tmp_path):
        self.timed: list[tuple[str, str]] = []
        self.ran: dict[tuple[str, str], int] = {}
        self.tuner = tuning.Tuner(
            timer=self.timer, cache_path=tmp_path / "tuning.json", measure_devices=("cpu",), defaults={}
        )
        self.names = {}
        for op, cands in list(self.tuner.table.items()):
            new = []
            for c in cands:
                fn = self._counting(op, c.name, c.fn)
                self.names[fn] = (op, c.name)
                new.append(dataclasses.replace(c, fn=fn, lean=None))  # (counted: the public launcher)
            self.tuner.table[op] = tuple(new)

    def _counting(self, op, name, fn):
        def run(*a, **k):
            self.ran[(op, name)] = self.ran.get((op, name), 0) + 1
            return fn(*a, **k)

        return run

    def timer(self, fn, args, kwargs):
        op, name = self.names[fn]
        self.timed.append((op, name))
        return FAKE_MS[name]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    f = _Fake(tmp_path)
    monkeypatch.setattr(tuning, "_DEFAULT", [f.tuner])
    return f


def _setup(seed=3):
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs())
    m = random_model(xlmrxl.XLMRobertaXLModel, cfg, seed=seed)
    inputs = make_inputs(cfg, batch=3, seq=9, seed=seed, fully_padded_row=False)
    return m, inputs


def _run(m, inputs):
    with torch.inference_mode():
        return m(**inputs).last_hidden_state


def _err(a, b, mask):
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


def _choices(fake, op) -> list:
    """The tuner's kept choices for ``op`` (one per shape bucket)."""
    return [c for k, c in fake.tuner._memory.items() if k[1] == op and k[3] == "auto"]


def test_model_runs_what_the_tuner_measured_fastest(fake, monkeypatch):
    m, inputs = _setup()
    want = _run(m.set_backend("reference"), inputs)
    spy = FastPathSpy(monkeypatch)
    got = _run(m.set_backend("auto"), inputs)
    assert spy.encoder == 1  # the packed stack ran
    assert _err(got, want, inputs["attention_mask"]) <= TOL
    layers = m.config.num_hidden_layers
    expect = {"linear_gelu": "cublas", "linear_residual": "cublas", "add_layernorm": "torch"}
    for op, name in expect.items():
        choices = _choices(fake, op)  # one per shape bucket (two linear_residual: K = H and I)
        assert choices and all(c.name == name and c.source == "measured" for c in choices)
        assert fake.ran.get((op, "triton"), 0) == 0  # the Triton candidate lost and never ran in the model
    assert fake.ran[("linear_residual", "cublas")] == 2 * layers  # attention output + FFN output per layer
    assert fake.ran[("linear_gelu", "cublas")] == layers
    assert ("linear_residual", "cublas-addmm") in fake.timed
    # attention_varlen on a CPU: Triton against SDPA per sequence (the flash ones are CUDA-only); Triton wins here
    (att,) = _choices(fake, "attention_varlen")
    assert att.name == "triton" and att.reasons["sdpa-seq"].code == reasons.SLOWER
    assert fake.ran[("attention_varlen", "triton")] == layers
    # the reasons speak the one vocabulary
    lr = _choices(fake, "linear_residual")[0]
    why = {r.split(":")[0]: r.code for r in lr.why_not()}
    assert why == {"triton": reasons.SLOWER, "cublas-addmm": reasons.SLOWER}
    # chosen once: a second forward times nothing and reads the in-memory choice; the disk cache holds it
    n = len(fake.timed)
    got2 = _run(m, inputs)
    assert len(fake.timed) == n and torch.equal(got, got2)
    assert "linear_residual" in (fake.tuner.cache_path.read_text())


def test_choice_logged_once_at_info(fake, caplog, monkeypatch):
    monkeypatch.setattr(logs, "_LOGGED", set())
    m, inputs = _setup()
    m.set_backend("auto")
    with caplog.at_level("INFO", logger="xlmrxl_kernels"):
        _run(m, inputs)
        _run(m, inputs)
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    gelu = [s for s in msgs if s.startswith("xlmrxl_kernels: linear_gelu (")]
    assert len(gelu) == 1 and "cublas (cublas 1.0000 ms, triton 3.0000 ms)" in gelu[0]  # measured: with timings
    att = [s for s in msgs if s.startswith("xlmrxl_kernels: attention_varlen (")]
    assert len(att) == 1 and "triton (triton 3.0000 ms, sdpa-seq 9.0000 ms)" in att[0]  # logged once


def test_tuning_off_uses_the_defaults(fake, monkeypatch):
    monkeypatch.setenv("XLMRXL_TUNING", "off")
    env.refresh()
    m, inputs = _setup()
    want = _run(m.set_backend("reference"), inputs)
    got = _run(m.set_backend("auto"), inputs)
    assert _err(got, want, inputs["attention_mask"]) <= TOL
    assert fake.timed == []
    for op in MULTI:
        for choice in _choices(fake, op):
            assert choice.name == "triton" and choice.source == "default"  # the first eligible candidate
            got = {r.code for r in choice.why_not()}  # (plus the CUDA-only entries: device)
            assert reasons.TUNING_OFF in got and got <= {reasons.TUNING_OFF, reasons.DEVICE}


def test_nothing_is_tuned_inside_capture(fake, monkeypatch):
    m, inputs = _setup()
    m.set_backend("auto")
    monkeypatch.setattr(tuning, "_capturing", lambda device: True)  # every call looks like a CUDA-graph capture
    want = _run(m, inputs)
    assert fake.timed == []
    # a stand-in for the capture only: neither the layer's bound sites nor the tuner keep it
    assert not any(k[1] in MULTI for k in fake.tuner._memory)
    assert fake.ran[("linear_residual", "triton")] > 0  # the default ran meanwhile
    monkeypatch.undo()
    monkeypatch.setattr(tuning, "_DEFAULT", [fake.tuner])
    got = _run(m, inputs)  # outside capture: measured now
    assert {op for op, _ in fake.timed} == set(MULTI)
    assert _err(got, want, inputs["attention_mask"]) <= TOL


def test_cpu_auto_is_the_rule_and_times_nothing(monkeypatch, tmp_path):
    f = _Fake(tmp_path)
    f.tuner.measure_devices = ("cuda",)  # the default: nothing is timed on a CPU
    monkeypatch.setattr(tuning, "_DEFAULT", [f.tuner])
    m, inputs = _setup()
    got = _run(m.set_backend("auto"), inputs)
    want = _run(m.set_backend("reference"), inputs)
    assert torch.equal(got, want)  # the same rule: the reference maths (SDPA per sequence for attention)
    assert f.timed == []
    for (_device, op, _key, backend, _off), c in f.tuner._memory.items():
        assert c.source == "rule" and c.candidate.kind != "triton", (op, backend, c.name)
        if backend == "auto" and "triton" in c.reasons:
            assert c.reasons["triton"].code == reasons.NOT_MEASURED


# -- one environment parser ------------------------------------------------------------------------------------------
_SWITCHES = [v for v in env.VARIABLES.values() if v.kind != "path"]


@pytest.mark.parametrize("var", _SWITCHES, ids=[v.name for v in _SWITCHES])
def test_unknown_value_of_each_switch_fails_when_a_model_is_built(var, monkeypatch):
    monkeypatch.setenv(var.name, "sometimes")
    env.refresh()
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs())
    with pytest.raises(env.EnvError, match=var.name) as info:
        xlmrxl.XLMRobertaXLModel(cfg)
    msg = str(info.value)
    assert "'sometimes'" in msg
    allowed = {"bool": "true, false", "ops": "attention_varlen", "choice": ", ".join(var.choices)}[var.kind]
    assert allowed in msg


def test_backend_and_disable_kernels_come_from_the_parser(monkeypatch):
    monkeypatch.setenv("XLMRXL_BACKEND", " Reference ")
    monkeypatch.setenv("XLMRXL_DISABLE_KERNELS", "linear_gelu, attention")
    env.refresh()
    be = Backend()
    assert be.name == "reference" and be.disabled == {"linear_gelu", "attention"}
    monkeypatch.setenv("XLMRXL_BACKEND", "auto")
    assert Backend().name == "reference"  # cached: read once, not per call
    env.refresh()
    assert Backend().name == "auto"


# -- the packed stack validates its host lengths once per forward -----------------------------------------------------
def test_packed_stack_validates_host_lengths_without_sync(monkeypatch):
    from xlmrxl.fast import pack

    m, inputs = _setup(seed=5)
    m.set_backend("triton")  # CPU: the Triton kernels under TRITON_INTERPRET=1
    seen = []
    real = stack.check_host_seqlens

    def spy(*a, **k):
        seen.append(a[-1])  # the host lengths
        return real(*a, **k)

    monkeypatch.setattr(stack, "check_host_seqlens", spy)
    with torch.inference_mode():
        hidden = m.embeddings(input_ids=inputs["input_ids"])
        x, packing = pack(hidden, inputs["attention_mask"])
        good, _ = stack.packed_stack(m.encoder, x, packing, m.backend, causal=False)
        assert seen == [packing.lengths]  # checked once per forward, not per layer
        lens = list(packing.lengths)
        bad_cases = {
            "sum to": [lens[0] + 100, *lens[1:]],  # more rows than the packed tensor has
            "max_seqlen": [packing.max_seqlen + 1, max(lens[1] - 1, 0), *lens[2:]],  # longer than max_seqlen
            "lengths but cu_seqlens describes": lens[:-1],  # one sequence missing
            "negative": [-1, *lens[1:]],
        }
        for what, corrupt in bad_cases.items():
            p = dataclasses.replace(packing, lengths=tuple(corrupt))
            with pytest.raises(ValueError, match=f"seqlens_q.*{what}|{what}.*seqlens_q|seqlens_q\\[0\\].*{what}"):
                stack.packed_stack(m.encoder, x, p, m.backend, causal=False)
        again, _ = stack.packed_stack(m.encoder, x, packing, m.backend, causal=False)
    assert torch.equal(good, again)
