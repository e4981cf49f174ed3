"""``xlmrxl.accelerate`` on COMET metrics (unbabel-comet 2.2.7, transformers 4.56.2) built offline on a tiny random
XLM-RoBERTa-XL: RegressionMetric (COMET-22 shape: softmax mix, per-layer normalisation, average pooling),
UnifiedMetric (CometKiwi shape: sparsemax mix with normalisation, mt + src), XCOMETMetric (sparsemax mix, word-level
error spans). ``predict`` after acceleration gives COMET's output (format, order, values: segment and system scores
fp32 <= 1e-6, error spans identical) with padding in every batch and any batch size; the encoder runs the packed
layer stack and the layer mix never sees a padded layer; ``deaccelerate`` restores COMET's code bit for bit;
``mc_dropout`` runs COMET's code with one logged reason; the layer mix's memory does not grow with the layers.
"""

from __future__ import annotations

import copy
import json
import socket

import pytest
import torch

pytest.importorskip("comet")

import _client_fixtures  # noqa: E402

import xlmrxl  # noqa: E402
from benchmarks.clients_models import comet_model, encoder_dir, wmt_samples  # noqa: E402
from xlmrxl.fast import stack  # noqa: E402

TOL = 1e-6


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    return _client_fixtures.tiny_xl_dir(tmp_path_factory)


@pytest.fixture
def xlmrxl_records(monkeypatch, caplog):
    return _client_fixtures.xlmrxl_records(monkeypatch, caplog)


def _predict(model, data, batch_size, **kw):
    return model.predict(data, batch_size=batch_size, gpus=0, progress_bar=False, **kw)


def _same_output(got, want, tol=TOL):
    """COMET's Prediction: same keys in the same order, segment and system scores within ``tol``, the same
    metadata (error spans identical, scores within ``tol``)."""
    assert list(got.keys()) == list(want.keys())
    assert len(got.scores) == len(want.scores)
    err = max(abs(a - b) for a, b in zip(got.scores, want.scores))
    assert err <= tol, f"segment scores differ by {err:.3g}"
    assert abs(got.system_score - want.system_score) <= tol, "system score differs"
    if "metadata" in want:
        assert list(got.metadata.keys()) == list(want.metadata.keys())
        for key, value in want.metadata.items():
            if key == "error_spans":
                assert json.dumps(got.metadata[key]) == json.dumps(value) or _spans_close(got.metadata[key], value)
            else:
                e = max(abs(a - b) for a, b in zip(got.metadata[key], value))
                assert e <= tol, f"metadata {key} differs by {e:.3g}"
    return err


def _spans_close(got, want) -> bool:
    """Error spans identical: text, severity, offsets; confidences (a mean of probabilities) within 1e-6."""
    assert len(got) == len(want)
    for g_row, w_row in zip(got, want):
        assert len(g_row) == len(w_row), f"{len(g_row)} spans vs {len(w_row)}"
        for g, w in zip(g_row, w_row):
            assert {k: v for k, v in g.items() if k != "confidence"} == {
                k: v for k, v in w.items() if k != "confidence"
            }
            assert abs(g["confidence"] - w["confidence"]) <= TOL
    return True


class _Calls:
    """Counts calls of the fused layer stack and of the transformers model's own forward."""

    def __init__(self, monkeypatch, model):
        self.fused = 0
        self.hf = 0
        real = stack.encoder_forward

        def spy(*a, **k):
            self.fused += 1
            assert k.get("layer_callback") is not None, "the COMET encoder must run the packed layer mix"
            assert not k.get("output_hidden_states"), "no padded layer may be collected"
            return real(*a, **k)

        monkeypatch.setattr(stack, "encoder_forward", spy)
        model.encoder.model.register_forward_pre_hook(lambda *a: setattr(self, "hf", self.hf + 1))


CASES = [
    ("xcomet", {}),  # word layer = the last hidden state
    ("xcomet", {"word_layer": 1}),  # word layer in the middle, kept packed while the others are mixed
    ("kiwi", {}),
    ("comet22", {}),
    ("comet22", {"layer": 2, "layer_norm": False}),  # one fixed layer, no mix
]


@pytest.mark.parametrize(
    "kind,overrides", CASES, ids=[f"{k}-{'-'.join(map(str, o.values())) or 'default'}" for k, o in CASES]
)
def test_predict_matches_comet(kind, overrides, xl_dir, monkeypatch):
    model = comet_model(kind, xl_dir, **overrides)
    data = wmt_samples(7, 1, 25, seed=3, ref=kind != "kiwi")  # different lengths: padding in every batch
    want = {bs: _predict(model, data, bs) for bs in (3, 7)}
    assert xlmrxl.accelerate(model) is model
    assert xlmrxl.is_accelerated(model)
    calls = _Calls(monkeypatch, model)
    for bs, ref in want.items():
        _same_output(_predict(model, data, bs), ref)
    assert calls.fused > 0 and calls.hf == 0, f"fused calls {calls.fused}, transformers forward calls {calls.hf}"
    if kind == "xcomet":
        assert any(want[3].metadata.error_spans), "the test model should flag some error spans"
    assert xlmrxl.deaccelerate(model) is model
    assert not xlmrxl.is_accelerated(model)
    assert "forward" not in model.encoder.__dict__
    if model.layerwise_attention is not None:
        assert "forward" not in model.layerwise_attention.__dict__
    again = _predict(model, data, 3)
    assert again.scores == want[3].scores, "deaccelerate must restore COMET's own code"


@pytest.mark.parametrize("kind", ["xcomet", "comet22", "kiwi"])
def test_predict_under_emulated_cuda_graphs(kind, xl_dir):
    """``XLMRXL_CUDA_GRAPHS=emulate`` (the captured graph's static-buffer path, on CPU): COMET's layer mix runs inside
    the graph, every batch takes the graph route, and the scores equal those with graphs off."""
    model = comet_model(kind, xl_dir)
    data = wmt_samples(7, 1, 25, seed=3, ref=kind != "kiwi")
    xlmrxl.accelerate(model)
    enc = model.encoder.model.encoder
    stack.set_graph_mode(enc, False)
    want = _predict(model, data, 3)
    assert xlmrxl.last_route(model).graph is None
    stack.set_graph_mode(enc, "emulate")
    xlmrxl.reset_stats()
    got = _predict(model, data, 3)
    counts = xlmrxl.stats()
    assert counts["routes"]["packed"] >= 3 and counts["routes"]["exact"] == 0  # (one per batch and input kind)
    assert counts["graphs"]["emulated"] == counts["routes"]["packed"] and counts["graphs"]["eager"] == 0
    assert xlmrxl.last_route(model).graph == "emulated"
    _same_output(got, want)


def test_accelerate_twice_and_backend_update(xl_dir):
    model = comet_model("comet22", xl_dir)
    xlmrxl.accelerate(model)
    patch = model.encoder.__dict__["forward"]
    xlmrxl.accelerate(model, backend="reference")
    assert model.encoder.__dict__["forward"] is patch and patch.backend.name == "reference"
    twin = copy.deepcopy(model)  # an accelerated model deep-copies (plain objects, no closures)
    assert twin.encoder.__dict__["forward"].metric is twin
    data = wmt_samples(3, 2, 15, seed=8)
    _same_output(_predict(twin, data, 2), _predict(model, data, 2), tol=0.0)
    xlmrxl.deaccelerate(model.encoder.model)  # only the transformers model: COMET's own code runs again
    _same_output(_predict(model, data, 2), _predict(twin, data, 2))
    xlmrxl.deaccelerate(model)
    xlmrxl.deaccelerate(model)  # idempotent


def test_direct_forward_and_encoder_output(xl_dir):
    """Calling COMET's modules directly (not through predict): the encoder dict keeps COMET's keys; a layer that
    is neither mixed nor read by a head gives a clear error."""
    model = comet_model("xcomet", xl_dir)
    batch = model.prepare_for_inference(wmt_samples(3, 2, 20, seed=1))
    with torch.inference_mode():
        want = [model(**inp) for inp in batch]
        xlmrxl.accelerate(model)
        got = [model(**inp) for inp in batch]
        out = model.encoder(batch[0]["input_ids"], batch[0]["attention_mask"])
    for g, w in zip(got, want):
        assert (g.score - w.score).abs().max() <= TOL
        real = batch[0]["attention_mask"].bool()
    assert set(out) == {"sentemb", "wordemb", "all_layers", "attention_mask"}
    assert len(out["all_layers"]) == model.encoder.num_layers
    with pytest.raises(KeyError, match="deaccelerate"):
        out["all_layers"][0]
    assert out["all_layers"][-1].shape == out["wordemb"].shape
    assert torch.equal(out["all_layers"][-1][real], out["wordemb"][real])


def test_mc_dropout_runs_comets_code_with_one_reason(xl_dir, xlmrxl_records):
    model = comet_model("comet22", xl_dir)
    xlmrxl.accelerate(model)
    data = wmt_samples(4, 2, 15, seed=5)
    out = _predict(model, data, 2, mc_dropout=3)
    assert len(out.scores) == 4 and set(out.metadata) == {"mcd_scores", "mcd_std"}
    reasons = [r.getMessage() for r in xlmrxl_records() if "training mode" in r.getMessage()]
    assert len(reasons) == 1, reasons
    assert "dropout" in reasons[0]


def test_not_an_xl_comet_model(xl_dir):
    import transformers

    model = comet_model("comet22", xl_dir)
    cfg = transformers.XLMRobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model.encoder.model = transformers.XLMRobertaModel(cfg, add_pooling_layer=False)
    with pytest.warns(UserWarning, match="XLMRobertaModel.*left unchanged"):  # as for a bare XLMRobertaModel
        assert xlmrxl.accelerate(model) is model
    assert not xlmrxl.is_accelerated(model)
    with pytest.raises(TypeError, match="COMET"):
        xlmrxl.accelerate(object())


def _save_checkpoint(model, root):
    import pytorch_lightning as ptl
    import yaml

    (root / "checkpoints").mkdir(parents=True)
    trainer = ptl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(root / "checkpoints" / "model.ckpt", weights_only=True)
    (root / "hparams.yaml").write_text(yaml.safe_dump(dict(model.hparams)))
    return root


def test_comet_load_offline(xl_dir, tmp_path, monkeypatch):
    import xlmrxl.comet

    model = comet_model("xcomet", xl_dir)
    root = _save_checkpoint(model, tmp_path / "xcomet-tiny")
    data = wmt_samples(5, 1, 20, seed=7)
    want = _predict(model, data, 2)

    def no_network(*a, **k):
        raise AssertionError("xlmrxl.comet.load tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded = xlmrxl.comet.load(root, dtype="float32", device="cpu")
    assert xlmrxl.is_accelerated(loaded) and not loaded.training
    _same_output(_predict(loaded, data, 2), want)
    loaded2 = xlmrxl.comet.load(root / "checkpoints" / "model.ckpt", pretrained_model=str(xl_dir))
    _same_output(_predict(loaded2, data, 3), want)
    with pytest.raises(FileNotFoundError, match="model.ckpt"):
        xlmrxl.comet.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype"):
        xlmrxl.comet.load(root, dtype="float33")


def test_bf16_within_twice_comets_error(xl_dir):
    """bf16: the accelerated scores' error vs the fp32 truth is at most twice plain COMET's in bf16 (the mix is
    accumulated in fp32, COMET's in bf16). COMET's own code cannot run a bf16 model with per-layer normalisation or
    average pooling (both return fp32 into a bf16 estimator), so this CometKiwi-shaped model mixes without it."""
    data = wmt_samples(6, 2, 25, seed=9, ref=False)
    truth = _predict(comet_model("kiwi", xl_dir, layer_norm=False), data, 3).scores
    model = comet_model("kiwi", xl_dir, layer_norm=False).to(torch.bfloat16)
    plain = _predict(model, data, 3).scores
    xlmrxl.accelerate(model)
    ours = _predict(model, data, 3).scores
    e_plain = max(abs(a - b) for a, b in zip(plain, truth))
    e_ours = max(abs(a - b) for a, b in zip(ours, truth))
    assert e_plain > 0, "bf16 should differ from fp32 somewhere"
    assert e_ours <= 2 * e_plain + 1e-6, f"bf16 error {e_ours:.3g} vs COMET's {e_plain:.3g}"


@pytest.mark.gpu
def test_predict_gpus_1(xl_dir):
    model = comet_model("xcomet", xl_dir)
    data = wmt_samples(6, 1, 25, seed=11)
    want = model.predict(data, batch_size=4, gpus=1, progress_bar=False)
    xlmrxl.accelerate(model)
    _same_output(model.predict(data, batch_size=4, gpus=1, progress_bar=False), want, tol=1e-5)


def _peak_bytes(fn, trace) -> int:
    """Peak of the CPU allocator's live bytes while ``fn`` runs, above what was live when it started: torch's
    profiler records every allocation and free with the allocator's running total ('Total Allocated')."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    prof.export_chrome_trace(str(trace))
    events = [e["args"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    events = [a for a in events if a.get("Device Type") == 0]  # CPU
    assert events, "the profiler recorded no allocation"
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(a["Total Allocated"] for a in events) - start


@pytest.mark.parametrize("kind", ["kiwi", "xcomet"])
def test_layer_mix_memory_does_not_grow_with_layers(kind, tmp_path):
    """A layer-mix COMET forward: COMET's holds every padded layer (grows ~ L x B x S x H); the accelerated one holds
    the packed states and one fp32 accumulator, whatever the number of layers."""
    from benchmarks.clients_models import TINY

    shape = dict(TINY, hidden_size=128, intermediate_size=256)
    peaks = {}
    for layers in (2, 6):
        enc = encoder_dir(tmp_path / f"l{layers}", dict(shape, num_hidden_layers=layers))
        model = comet_model(kind, enc)
        inputs = model.prepare_for_inference(wmt_samples(8, 5, 60, seed=2, ref=kind != "kiwi"))[-1]
        B, S = inputs["input_ids"].shape

        def run():
            with torch.inference_mode():
                model(**inputs)

        run()
        plain = _peak_bytes(run, tmp_path / "plain.json")
        xlmrxl.accelerate(model)
        run()  # fuses q/k/v once (persistent, like the weights)
        ours = _peak_bytes(run, tmp_path / "ours.json")
        peaks[layers] = (plain, ours)
    padded_layer = B * S * shape["hidden_size"] * 4
    plain_growth = peaks[6][0] - peaks[2][0]
    ours_growth = peaks[6][1] - peaks[2][1]
    assert plain_growth >= 3 * padded_layer, f"the measurement should see COMET's layers ({plain_growth} bytes)"
    assert ours_growth <= 0.25 * padded_layer, (
        f"accelerated peak grew by {ours_growth} bytes from 2 to 6 layers (one padded layer: {padded_layer} bytes)"
    )
