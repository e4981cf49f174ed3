"""Checkpoint IO options, errors and limits (xlmrxl.checkpoint): transformers' loader options, sizes, every error
message (missing files, shape mismatches, truncated or corrupted safetensors, a missing shard, pickled objects
refused), safetensors preferred over .bin, the peak memory of a load (in a subprocess), and loading straight onto a
GPU. Round trips: ``tests/test_checkpoint.py``."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import tiny_config_kwargs  # noqa: E402
from test_checkpoint import (  # noqa: E402
    REPO,
    _assert_same_weights,
    _copy_dir,
    _hf_model,
    make_hf_dirs,
    make_hf_mlm,
)

import xlmrxl  # noqa: E402
from xlmrxl import parsing  # noqa: E402
from xlmrxl.checkpoint import CheckpointError, UnsafeCheckpointError, load_pretrained, save_pretrained  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------------
# transformers' loader options, sizes
# ---------------------------------------------------------------------------------------------------------------------
def test_transformers_loader_options(hf_mlm, hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs / "single", tmp_path / "opts" / "sub")
    shutil.copy(hf_dirs / "bin" / "pytorch_model.bin", d)  # now both .safetensors and .bin
    with open(d / "pytorch_model.bin", "r+b") as fh:  # the .bin must not be read unless asked for
        fh.truncate(100)
    model = load_pretrained(
        xlmrxl.XLMRobertaXLForMaskedLM,
        tmp_path / "opts",
        subfolder="sub",
        device_map="cpu",
        low_cpu_mem_usage=True,
        trust_remote_code=False,
    )
    _assert_same_weights(model, hf_mlm.state_dict())
    assert not hasattr(model.config, "low_cpu_mem_usage") and not hasattr(model.config, "device_map")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin could not be read .* truncated or corrupted"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d, use_safetensors=False)
    with pytest.raises(ValueError, match=r"device='gpu0' is not a device"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d, device="gpu0")
    with pytest.raises(ValueError, match=r"device_map=.* several devices"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d, device_map={"roberta": 0, "lm_head": "cpu"})


def test_parse_size():
    assert parsing.parse_size("5GB") == 5 * 10**9 and parsing.parse_size("100KB") == 100_000
    assert parsing.parse_size("2GiB") == 2 << 30 and parsing.parse_size(123) == 123
    assert parsing.parse_size("500MB") == 500 * 10**6
    with pytest.raises(ValueError, match=r"max_shard_size='5 parsecs'"):
        parsing.parse_size("5 parsecs")
    with pytest.raises(ValueError, match=r"max_shard_size='5 parsecs'"):
        save_pretrained(torch.nn.Linear(1, 1), "/nonexistent-never-created", max_shard_size="5 parsecs")


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_mlm():
    return make_hf_mlm()


@pytest.fixture(scope="module")
def hf_dirs(hf_mlm, tmp_path_factory):
    return make_hf_dirs(hf_mlm, tmp_path_factory.mktemp("hf"))


def test_error_missing_directory_and_weights(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"checkpoint directory '.*nowhere' does not exist\. Pass a local"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a repo id: only the local Hub cache is tried
    with pytest.raises(FileNotFoundError, match=r"'no-such-owner/no-such-model' does not exist; as a Hub repo id"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, "no-such-owner/no-such-model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(tiny_config_kwargs()))
    looked = r"model\.safetensors, model\.safetensors\.index\.json, pytorch_model\.bin, pytorch_model\.bin\.index\.json"
    with pytest.raises(FileNotFoundError, match=r"no weights file.*" + looked):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "empty")


def test_error_shape_mismatch(hf_dirs, tmp_path):
    torch.manual_seed(3)
    clf = _hf_model("XLMRobertaXLForSequenceClassification", num_labels=3)
    clf.save_pretrained(tmp_path / "clf")
    with pytest.raises(
        CheckpointError,
        match=r"classifier\.out_proj\.weight: checkpoint shape \(3, 64\), model shape "
        r"\(2, 64\)[\s\S]*num_labels=3",
    ):
        load_pretrained(xlmrxl.XLMRobertaXLForSequenceClassification, tmp_path / "clf", num_labels=2)
    model, info = load_pretrained(
        xlmrxl.XLMRobertaXLForSequenceClassification,
        tmp_path / "clf",
        num_labels=5,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
    )
    assert [k for k, _, _ in info["mismatched_keys"]] == ["classifier.out_proj.bias", "classifier.out_proj.weight"] or [
        k for k, _, _ in info["mismatched_keys"]
    ] == ["classifier.out_proj.weight", "classifier.out_proj.bias"]
    assert model.classifier.out_proj.weight.shape == (5, 64)
    with pytest.raises(
        CheckpointError,
        match=r"embeddings\.word_embeddings\.weight: checkpoint shape \(300, 64\), "
        r"model shape \(300, 128\)[\s\S]*wrong model size",
    ):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single", hidden_size=128)


def test_error_truncated_and_corrupted_safetensors(hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs / "single", tmp_path / "trunc")
    path = d / "model.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 1000)
    with pytest.raises(
        CheckpointError,
        match=rf"model\.safetensors is truncated or corrupted: .*{size} bytes.*"
        rf"only {size - 1000} bytes",
    ):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)
    with open(path, "r+b") as fh:  # header length beyond the end of the file
        fh.write((10**7).to_bytes(8, "little"))
    with pytest.raises(CheckpointError, match=rf"truncated or corrupted: .*{8 + 10**7}.*{size - 1000}"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)
    with open(path, "r+b") as fh:  # a header length no safetensors file can have: refused before any read
        fh.write((2**62).to_bytes(8, "little"))
    with pytest.raises(CheckpointError, match=r"header length field says 4611686018427387904 bytes, over"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)
    d2 = _copy_dir(hf_dirs / "single", tmp_path / "badjson")
    with open(d2 / "model.safetensors", "r+b") as fh:
        fh.seek(8)
        fh.write(b"{]not json")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: the safetensors header .* is not valid JSON"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d2)


def test_error_index_names_missing_shard(hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs / "sharded", tmp_path / "sh")
    shards = sorted(f for f in os.listdir(d) if f.startswith("model-"))
    os.remove(d / shards[1])
    with pytest.raises(FileNotFoundError, match=rf"names shard\(s\) that are not in .*{shards[1]}"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)
    (d / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json is not valid JSON"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)


class _Payload:
    """Pickles to a call that would create a marker file if it were ever executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_error_bin_with_arbitrary_objects_is_refused(hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs / "bin", tmp_path / "evil")
    marker = tmp_path / "EXECUTED"
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    state["payload"] = _Payload(str(marker))
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"pytorch_model\.bin holds non-tensor .* refused for safety"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)
    assert not marker.exists(), "the pickled payload was executed"


def test_safetensors_preferred_over_bin(hf_mlm, hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs / "single", tmp_path / "both")
    (d / "pytorch_model.bin").write_bytes(b"not a checkpoint at all")
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)
    _assert_same_weights(model, hf_mlm.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# peak memory while loading (in a fresh process)
# ---------------------------------------------------------------------------------------------------------------------
_MEM_SCRIPT = textwrap.dedent("""
    import json, os, sys, gc
    import torch
    import xlmrxl
    path, fmt, dtype, warmup = sys.argv[1:5]

    def status(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    cls = xlmrxl.XLMRobertaXLForMaskedLM
    cls.from_pretrained(warmup, dtype=getattr(torch, dtype), progress=False)   # every lazy import done before
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")                                  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS:")
    model = cls.from_pretrained(path, dtype=getattr(torch, dtype), progress=False)
    peak = status("VmHWM:")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"increase": peak - before, "weights": weights}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("fmt,dtype", [("safetensors", "float32"), ("bin", "float32"), ("safetensors", "bfloat16")])
def test_peak_memory_of_a_load(hf_dirs, tmp_path_factory, fmt, dtype):
    root = tmp_path_factory.getbasetemp() / "mem"
    if not (root / fmt).exists():
        torch.manual_seed(4)
        cfg = xlmrxl.XLMRobertaXLConfig(
            **tiny_config_kwargs(
                vocab_size=8000,
                hidden_size=512,
                num_hidden_layers=8,
                num_attention_heads=8,
                intermediate_size=2048,
                max_position_embeddings=514,
            )
        )
        model = xlmrxl.XLMRobertaXLForMaskedLM(cfg)
        save_pretrained(model, root / fmt, safe_serialization=(fmt == "safetensors"))
        del model
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEM_SCRIPT,
            str(root / fmt),
            fmt,
            dtype,
            str(hf_dirs / ("single" if fmt == "safetensors" else "bin")),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["weights"] > 50e6 if dtype == "bfloat16" else out["weights"] > 100e6, out
    ratio = out["increase"] / out["weights"]
    assert ratio <= 1.2, (
        f"{fmt} -> {dtype}: peak RSS rose by {out['increase'] / 1e6:.1f} MB for "
        f"{out['weights'] / 1e6:.1f} MB of weights ({ratio:.2f}x > 1.2x)"
    )


# ---------------------------------------------------------------------------------------------------------------------
# GPU: straight onto the device
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["single", "bin"])
def test_load_onto_cuda(hf_mlm, hf_dirs, layout):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / layout, dtype=torch.bfloat16, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    ref = {k: v.to(torch.bfloat16) for k, v in hf_mlm.state_dict().items()}
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), ref[k]), k
