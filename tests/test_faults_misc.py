"""Remaining faults, one test each: ``accelerate`` on a model that is not XLM-RoBERTa-XL, CUDA asked of a
CPU-only torch (every model class and the pipeline), int4 checkpoints saved before and after a forward (ours and
transformers' ``save_pretrained`` of an accelerated model: same bytes), and a model dispatched by the real
``accelerate`` package (``cpu_offload``: ``AlignDevicesHook`` on its modules) taking the exact path."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from _oracle import HEADS, FastPathSpy, hf_twin, random_model
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl import XLMRobertaXLConfig

transformers = pytest.importorskip("transformers")


def _cfg(**kw):
    return XLMRobertaXLConfig(**tiny_config_kwargs(num_hidden_layers=2, **kw))


# -- accelerate() on another model -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["BertModel", "XLMRobertaModel", "XLMRobertaForSequenceClassification"])
def test_accelerate_leaves_other_models_unchanged_and_says_so(name, caplog):
    cfg_cls = transformers.BertConfig if name.startswith("Bert") else transformers.XLMRobertaConfig
    cfg = cfg_cls(
        vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, pad_token_id=1
    )
    model = getattr(transformers, name)(cfg).eval()
    ids = torch.randint(3, 300, (2, 5))
    with torch.no_grad():
        before = model(ids)[0]
    with caplog.at_level(logging.WARNING, logger="xlmrxl"), pytest.warns(UserWarning, match="not an XLM-RoBERTa-XL"):
        assert xlmrxl.accelerate(model) is model
    assert any(cfg.model_type in r.getMessage() and "not accelerated" in r.getMessage() for r in caplog.records)
    assert not xlmrxl.is_accelerated(model)
    base = getattr(model, "bert", None) or getattr(model, "roberta", None) or model
    assert "forward" not in base.encoder.__dict__ and not base._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(ids)[0], before)
    xlmrxl.deaccelerate(model)  # nothing to undo: no error


# -- CUDA on a CPU-only torch ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    xlmrxl.XLMRobertaXLForMaskedLM(_cfg()).save_pretrained(d)
    return d


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is not usable")
@pytest.mark.parametrize("name", HEADS)
def test_every_model_class_from_pretrained_cuda_without_cuda_says_how_to_fix(name, checkpoint):
    cls = getattr(xlmrxl, name)
    for device in ("cuda", "cuda:0", torch.device("cuda"), 0):
        with pytest.raises(ValueError, match=r"device=.* was requested, but .*pass device='cpu'"):
            cls.from_pretrained(checkpoint, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is not usable")
@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
def test_pipeline_cuda_without_cuda_says_how_to_fix(task, checkpoint):
    with pytest.raises(ValueError, match=r"device=.* was requested, but .*pass device='cpu'"):
        xlmrxl.pipeline(task, model=str(checkpoint), device="cuda")


# -- int4: a forward never changes what is saved -----------------------------------------------------------------
def _int4_cfg():
    return tiny_config_kwargs(hidden_size=128, intermediate_size=256, num_hidden_layers=2)


def test_int4_ours_saves_the_same_bytes_after_a_forward(tmp_path):
    """``xlmrxl.quantize`` / ``accelerate(ours, quantization="int4")``, one forward (q/k/v fused into views), save:
    the same files as the twin saved without a forward, and it reloads to the same outputs."""
    model = random_model(xlmrxl.XLMRobertaXLForMaskedLM, XLMRobertaXLConfig(**_int4_cfg()), seed=3)
    xlmrxl.accelerate(model, backend="reference", quantization="int4")
    untouched = copy.deepcopy(model)
    ids = torch.randint(3, 300, (2, 7))
    with torch.no_grad():
        out = model(ids).logits
    model.save_pretrained(tmp_path / "after")
    untouched.save_pretrained(tmp_path / "before")
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "after" / f).read_bytes() == (tmp_path / "before" / f).read_bytes(), f
    again = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "after", backend="reference")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, out)


def test_int4_accelerated_transformers_save_pretrained_same_bytes_after_a_forward(tmp_path):
    """transformers' own ``save_pretrained`` of ``accelerate(hf, quantization="int4")`` works after a forward and
    writes the same bytes as before it; xlmrxl loads it back to the same outputs."""
    ours = random_model(xlmrxl.XLMRobertaXLForMaskedLM, XLMRobertaXLConfig(**_int4_cfg()), seed=4)
    hf = xlmrxl.accelerate(hf_twin(ours), backend="reference", quantization="int4")
    hf.save_pretrained(tmp_path / "before")
    ids = torch.randint(3, 300, (2, 7))
    with torch.no_grad():
        out = hf(ids).logits
    hf.save_pretrained(tmp_path / "after")
    files = sorted(p.name for p in (tmp_path / "before").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "after").iterdir())
    for f in files:
        assert (tmp_path / "after" / f).read_bytes() == (tmp_path / "before" / f).read_bytes(), f
    again = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(tmp_path / "after", backend="reference")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, out)


# -- the accelerate package's device hooks -----------------------------------------------------------------------
@pytest.mark.parametrize("order", ["offload-then-accelerate", "accelerate-then-offload"])
def test_cpu_offload_takes_the_exact_path_and_equals_transformers(order, monkeypatch, caplog, fresh_log):
    """``accelerate.cpu_offload`` keeps weights off the module and loads them in an ``AlignDevicesHook`` around each
    forward: the fused path would skip those forwards, so the call takes the exact path (reason logged) and equals
    transformers' own output."""
    acc = pytest.importorskip("accelerate")
    ours = random_model(xlmrxl.XLMRobertaXLModel, _cfg(), seed=6)
    oracle, model = hf_twin(ours), hf_twin(ours)
    ids = torch.randint(3, 300, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    if order == "offload-then-accelerate":
        acc.cpu_offload(model, execution_device=torch.device("cpu"))
        xlmrxl.accelerate(model, backend="reference")
    else:
        xlmrxl.accelerate(model, backend="reference")
        acc.cpu_offload(model, execution_device=torch.device("cpu"))
    assert any("_hf_hook" in m.__dict__ for m in model.encoder.modules())
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="xlmrxl"):
        got = model(ids, attention_mask=mask).last_hidden_state
        want = oracle(ids, attention_mask=mask).last_hidden_state
    assert spy.encoder == 0 and spy.decoder == 0
    assert any("AlignDevicesHook" in r.getMessage() for r in caplog.records)
    assert float((got - want)[mask.bool()].abs().max()) <= 1e-5


# -- float64 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accelerated", [False, True], ids=["ours", "accelerated"])
def test_float64_model_has_float64_parity_with_transformers(accelerated, monkeypatch):
    """``model.double()`` computes in float64 on the fast path (the references once upcast to fp32 only): parity with
    transformers' float64 model is ~1e-12, not fp32's ~1e-7."""
    ours = random_model(xlmrxl.XLMRobertaXLForMaskedLM, _cfg(), seed=8)
    oracle = hf_twin(ours).double()
    model = xlmrxl.accelerate(hf_twin(ours), backend="reference") if accelerated else ours
    model.double()
    ids = torch.randint(3, 300, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, :2] = 0
    spy = FastPathSpy(monkeypatch)
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        want = oracle(ids, attention_mask=mask).logits
    assert spy.encoder == 1 and got.dtype == torch.float64
    err = float((got - want)[mask.bool()].abs().max())
    assert err <= 1e-10, f"float64 fast path {err:.3g} from transformers' float64"


# -- keep what works: concurrency ----------------------------------------------------------------------------------
@pytest.mark.parametrize("accelerated", [False, True], ids=["ours", "accelerated"])
def test_threads_sharing_one_model_are_bit_identical_to_one_thread(accelerated):
    """Several threads calling one model (different batches and paddings, the fast path) get exactly the outputs a
    single thread gets: no state leaks between concurrent calls (masks, packing, the MLM head's real rows)."""
    import threading

    ours = random_model(xlmrxl.XLMRobertaXLForMaskedLM, _cfg(), seed=9)
    model = xlmrxl.accelerate(hf_twin(ours), backend="reference") if accelerated else ours
    batches = []
    for k in range(4):
        ids = torch.randint(3, 300, (2 + k % 2, 5 + k))
        mask = torch.ones_like(ids)
        if k % 2:
            mask[0, 4:] = 0  # right padding
        mask[-1, : k % 3] = 0  # left padding
        batches.append((ids, mask))
    with torch.no_grad():
        alone = [model(i, attention_mask=m).logits for i, m in batches]
    got, errors = {}, []

    def work(k):
        try:
            with torch.no_grad():
                for _ in range(3):
                    i, m = batches[k]
                    got.setdefault(k, []).append(model(i, attention_mask=m).logits)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, outs in got.items():
        assert all(torch.equal(o, alone[k]) for o in outs), f"thread {k} differs from the single-thread result"
