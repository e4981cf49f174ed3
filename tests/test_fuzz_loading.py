"""Crafted and broken checkpoint files, each a clear error naming what is wrong; property-based fuzzing (hypothesis,
bounded) of safetensors headers, weights bytes and config dicts: a load or a CheckpointError / ValueError, nothing
else."""

import json
import os
import struct

import pytest
import torch
from conftest import tiny_config_kwargs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import xlmrxl
from xlmrxl.checkpoint import CheckpointError, load_pretrained, save_pretrained

CLS = xlmrxl.XLMRobertaXLForMaskedLM
CFG = tiny_config_kwargs(num_hidden_layers=1)
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _dir(path, config=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config if config is not None else dict(CFG, model_type="xlm-roberta-xl"), fh)
    return path


def _raw_safetensors(path, header, data=b""):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = CLS(xlmrxl.XLMRobertaXLConfig(**CFG))
    path = tmp_path_factory.mktemp("good")
    save_pretrained(model, path)
    return path, {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# crafted safetensors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8])
def test_integer_entry_where_a_float_weight_is_expected(good, tmp_path, dtype):
    _, state = good
    key = "roberta.encoder.layer.0.attention.self.query.weight"
    bad = {k: v.contiguous() for k, v in state.items() if k not in ("lm_head.decoder.weight", "lm_head.decoder.bias")}
    bad[key] = torch.ones_like(bad[key], dtype=dtype)
    d = _dir(tmp_path / "int")
    save_file(bad, str(d / "model.safetensors"), metadata={"format": "pt"})
    name = {torch.int32: "int32", torch.int64: "int64", torch.bool: "bool", torch.uint8: "uint8"}[dtype]
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is stored as {name}, but the model holds a floating"):
        load_pretrained(CLS, d)


def test_overlapping_entries_name_both_keys(tmp_path):
    d = _dir(tmp_path / "ov")
    header = {
        "roberta.pooler.dense.bias": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]},
        "lm_head.bias": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]},
    }
    _raw_safetensors(d / "model.safetensors", header, b"\0" * 256)
    with pytest.raises(
        CheckpointError, match=r"tensors 'lm_head\.bias' .* and 'roberta\.pooler\.dense\.bias' .* overlap"
    ):
        load_pretrained(CLS, d)


def test_header_bounds_dtype_and_nesting(tmp_path):
    d = _dir(tmp_path / "h")
    path = d / "model.safetensors"
    _raw_safetensors(path, {"lm_head.bias": {"dtype": "F99", "shape": [64], "data_offsets": [0, 256]}}, b"\0" * 256)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a valid safetensors file .*F99"):
        load_pretrained(CLS, d)
    _raw_safetensors(path, {"lm_head.bias": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}, b"\0" * 100)
    with pytest.raises(CheckpointError, match=r"truncated or corrupted: its header describes \d+ bytes but the file"):
        load_pretrained(CLS, d)
    _raw_safetensors(path, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CheckpointError, match=r"not valid JSON \(nested too deeply\)"):
        load_pretrained(CLS, d)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", 2**63))  # never read: bounded before anything is allocated
    with pytest.raises(CheckpointError, match=r"header length field says 9223372036854775808 bytes"):
        load_pretrained(CLS, d)


# ---------------------------------------------------------------------------------------------------------------------
# crafted indexes
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shard,match",
    [
        ("../outside.safetensors", r"not a plain file name inside the checkpoint directory"),
        ("/etc/passwd", r"not a plain file name inside the checkpoint directory"),
        ("sub/model.safetensors", r"not a plain file name"),
        (5, r"a weight_map value is 5 \(int\)"),
        (None, r"a weight_map value is None"),
        (["a"], r"a weight_map value is \['a'\] \(list\)"),
    ],
)
def test_index_shard_names(tmp_path, shard, match):
    d = _dir(tmp_path / "idx")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.bias": shard}}))
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(CLS, d)


@pytest.mark.parametrize("index", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
def test_index_naming_a_text_file_or_nested_json(tmp_path, index):
    d = _dir(tmp_path / "t")
    (d / index).write_text(json.dumps({"weight_map": {"lm_head.bias": "config.json"}}))
    with pytest.raises(CheckpointError, match=r"config\.json (is not a safetensors file|is not a PyTorch checkpoint)"):
        load_pretrained(CLS, d)
    (d / index).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"is not valid JSON \(nested too deeply\)"):
        load_pretrained(CLS, d)
    (d / index).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"has no usable 'weight_map'"):
        load_pretrained(CLS, d)


# ---------------------------------------------------------------------------------------------------------------------
# weights files that are not files
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo", "devzero", "directory"])
def test_weights_file_that_is_not_a_file(tmp_path, name, kind):
    d = _dir(tmp_path / "w")
    p = d / name
    if kind == "dangling":
        os.symlink(tmp_path / "gone", p)
        match = r"is a dangling symlink"
    elif kind == "loop":
        os.symlink(p, p)
        match = r"is a symlink loop"
    elif kind == "fifo":
        os.mkfifo(p)
        match = r"is a FIFO"
    elif kind == "devzero":
        os.symlink("/dev/zero", p)
        match = r"is a character device"
    else:
        p.mkdir()
        match = r"is a directory, not a weights file"
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(CLS, d)


@pytest.mark.parametrize(
    "content,match",
    [
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
            r"is a git-LFS pointer, not the PyTorch file itself.*git lfs pull",
        ),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", r"is an HTML/XML page, not a PyTorch checkpoint"),
        (bytes(range(7, 256)) * 4, r"is not a PyTorch checkpoint \(it starts with"),
        (b"", r"is empty, not a PyTorch checkpoint"),
    ],
)
def test_bin_that_is_not_a_checkpoint(tmp_path, content, match):
    d = _dir(tmp_path / "b")
    (d / "pytorch_model.bin").write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_pretrained(CLS, d)
    assert "refused for safety" not in str(err.value)


def test_lfs_pointer_safetensors(tmp_path):
    d = _dir(tmp_path / "l")
    (d / "model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    with pytest.raises(CheckpointError, match=r"git-LFS pointer, not the safetensors file itself"):
        load_pretrained(CLS, d)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is not usable")
def test_from_pretrained_cuda_without_a_gpu_says_how_to_fix(good):
    path, _ = good
    with pytest.raises(ValueError, match=r"device='cuda' was requested, but .*pass device='cpu'"):
        CLS.from_pretrained(path, device="cuda")


# ---------------------------------------------------------------------------------------------------------------------
# property-based fuzzing (bounded)
# ---------------------------------------------------------------------------------------------------------------------
_KEYS = ["lm_head.bias", "roberta.embeddings.word_embeddings.weight", "roberta.pooler.dense.bias", "x", "__metadata__"]
_DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "BOOL", "U8", "F99", ""]
_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(_DTYPES),
        "shape": st.lists(st.integers(-2, 70), max_size=3),
        "data_offsets": st.lists(st.integers(-8, 600), min_size=0, max_size=3),
    }
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _expect_load_or_clear_error(d):
    try:
        load_pretrained(CLS, d)
    except ValueError as exc:  # CheckpointError is a ValueError
        assert str(exc), "an error without a message"


@FUZZ
@given(
    header=st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), _entry | _json, max_size=4),
    data=st.binary(max_size=600),
)
def test_fuzz_safetensors_header(tmp_path_factory, header, data):
    d = _dir(tmp_path_factory.mktemp("fz"))
    _raw_safetensors(d / "model.safetensors", header, data)
    _expect_load_or_clear_error(d)


@FUZZ
@given(data=st.binary(max_size=300), name=st.sampled_from(["model.safetensors", "pytorch_model.bin"]))
def test_fuzz_weights_bytes(tmp_path_factory, data, name):
    d = _dir(tmp_path_factory.mktemp("fb"))
    (d / name).write_bytes(data)
    _expect_load_or_clear_error(d)


_FIELDS = list(tiny_config_kwargs()) + [
    "id2label",
    "label2id",
    "num_labels",
    "hidden_act",
    "dtype",
    "torch_dtype",
    "architectures",
    "problem_type",
    "position_embedding_type",
    "classifier_dropout",
    "is_decoder",
    "attn_implementation",
    "initializer_range",
    "chunk_size_feed_forward",
    "to_dict",
    "num_labels",
]
_config = st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=6), _json, max_size=5)


@FUZZ
@given(extra=_config, as_list=st.booleans())
def test_fuzz_config(tmp_path_factory, extra, as_list):
    d = tmp_path_factory.mktemp("fc")
    content = [extra] if as_list else dict(tiny_config_kwargs(), **extra)
    (d / "config.json").write_text(json.dumps(content))
    try:
        cfg = xlmrxl.XLMRobertaXLConfig.from_pretrained(d)
    except ValueError as exc:
        assert str(exc)
        return
    again = xlmrxl.XLMRobertaXLConfig.from_dict(json.loads(cfg.to_config_json()))  # what a save writes reads back
    assert {**again.to_dict(), "_name_or_path": ""} == {**cfg.to_dict(), "_name_or_path": ""}
