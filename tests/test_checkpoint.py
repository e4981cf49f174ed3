"""Checkpoint IO (xlmrxl.checkpoint): transformers <-> xlmrxl checkpoints both ways, key fixes, dtypes, sharding,
atomic saves (errors, peak memory and GPU loads: ``tests/test_checkpoint_errors.py``)."""

import json
import os
import shutil

import pytest
import torch
from conftest import tiny_config_kwargs

transformers = pytest.importorskip("transformers")

import xlmrxl  # noqa: E402
from xlmrxl import parsing, quantization  # noqa: E402
from xlmrxl.checkpoint import load_pretrained, save_pretrained  # noqa: E402
from xlmrxl.checkpoint import save as save_mod  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIED = ("lm_head.decoder.weight", "lm_head.decoder.bias")


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def _randomise(model):
    """Fresh random values everywhere (LayerNorms and biases too, which init leaves at 1 / 0)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def _hf_model(cls_name="XLMRobertaXLForMaskedLM", **overrides):
    cfg = transformers.XLMRobertaXLConfig(**tiny_config_kwargs(**overrides))
    model = getattr(transformers, cls_name)(cfg)
    model.set_attn_implementation("eager") if hasattr(model, "set_attn_implementation") else None
    return _randomise(model).eval()


def _hf_load(cls_name, path):
    return getattr(transformers, cls_name).from_pretrained(path, output_loading_info=True, attn_implementation="eager")


def _ids(batch=2, seq=9, vocab=300):
    ids = torch.randint(3, vocab, (batch, seq))
    ids[:, 0], ids[:, -1] = 0, 2
    return ids


def _assert_same_weights(ours, theirs_sd, dtype=None):
    ours_sd = ours.state_dict()
    for k, v in ours_sd.items():
        ref = theirs_sd[k]
        if dtype is not None:
            ref = ref.to(dtype)
        assert v.shape == ref.shape and v.dtype == ref.dtype, f"{k}: {v.shape}/{v.dtype} vs {ref.shape}/{ref.dtype}"
        assert torch.equal(v, ref), f"{k}: max diff {(v.float() - ref.float()).abs().max().item():.3g}"


def _assert_close(out, ref, what, atol=1e-5):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} vs {ref.dtype}"
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


def _no_info(info):
    # ours (like transformers 4.x) reports lists, transformers 5.x sets: both must be empty
    assert all(len(info[k]) == 0 for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


def _dir_snapshot(path):
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


def make_hf_mlm():
    torch.manual_seed(1)
    return _hf_model()


def make_hf_dirs(hf_mlm, root):
    """transformers' own saves of one tiny MLM: single file, sharded, .bin."""
    hf_mlm.save_pretrained(root / "single")
    hf_mlm.save_pretrained(root / "sharded", max_shard_size="40KB")
    hf_mlm.save_pretrained(root / "bin", safe_serialization=False)
    if not (root / "bin" / "pytorch_model.bin").exists():
        # transformers 5.x always writes safetensors: write the .bin as 4.x does (every key, tied ones included)
        (root / "bin" / "model.safetensors").unlink()
        torch.save({k: v.contiguous() for k, v in hf_mlm.state_dict().items()}, root / "bin" / "pytorch_model.bin")
    assert sorted(os.listdir(root / "bin")) == ["config.json", "pytorch_model.bin"]
    assert len([f for f in os.listdir(root / "sharded") if f.endswith(".safetensors")]) > 2
    return root


def _copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def hf_mlm():
    return make_hf_mlm()


@pytest.fixture(scope="module")
def hf_dirs(hf_mlm, tmp_path_factory):
    return make_hf_dirs(hf_mlm, tmp_path_factory.mktemp("hf"))


# ---------------------------------------------------------------------------------------------------------------------
# transformers -> ours, ours -> transformers
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_transformers_checkpoint_loads_with_identical_outputs(hf_mlm, hf_dirs, layout):
    model, info = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(hf_dirs / layout, output_loading_info=True)
    _no_info(info)
    assert not model.training
    _assert_same_weights(model, hf_mlm.state_dict())
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    ids = _ids()
    with torch.no_grad():
        _assert_close(model(input_ids=ids).logits, hf_mlm(input_ids=ids).logits, f"logits ({layout})")


@pytest.mark.parametrize("shard", [None, "30KB"])
def test_our_checkpoint_loads_in_transformers(hf_mlm, hf_dirs, tmp_path, shard):
    ours = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single")
    kw = {} if shard is None else {"max_shard_size": shard}
    ours.save_pretrained(tmp_path / "ours", **kw)
    files = sorted(os.listdir(tmp_path / "ours"))
    if shard is None:
        assert files == ["config.json", "model.safetensors"], files
    else:
        assert "model.safetensors.index.json" in files and "model-00001-of-" in files[1], files
    with open(tmp_path / "ours" / "config.json") as fh:
        cfg = json.load(fh)
    assert cfg["architectures"] == ["XLMRobertaXLForMaskedLM"] and cfg["torch_dtype"] == "float32", cfg
    from safetensors import safe_open

    first = sorted(f for f in files if f.endswith(".safetensors"))[0]
    with safe_open(str(tmp_path / "ours" / first), "pt") as f:
        assert f.metadata()["format"] == "pt"
    theirs, info = _hf_load("XLMRobertaXLForMaskedLM", tmp_path / "ours")
    _no_info(info)
    _assert_same_weights(ours, theirs.state_dict())
    ids = _ids()
    with torch.no_grad():
        _assert_close(theirs(input_ids=ids).logits, hf_mlm(input_ids=ids).logits, "transformers logits", atol=1e-6)
        _assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, "ours vs transformers")


def test_tied_aliases_are_not_saved(hf_dirs, tmp_path):
    from safetensors import safe_open

    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single")
    save_pretrained(model, tmp_path / "s")
    with safe_open(str(tmp_path / "s" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not keys & set(TIED), sorted(keys & set(TIED))
    assert {"lm_head.bias", "roberta.embeddings.word_embeddings.weight"} <= keys
    assert len(keys) == len(set(model.state_dict())) - 2


# ---------------------------------------------------------------------------------------------------------------------
# key fixes
# ---------------------------------------------------------------------------------------------------------------------
def _write_state(path, state, config_src):
    """A checkpoint directory holding ``state`` as written by another tool (clones: no shared storage)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in state.items()},
        os.path.join(path, "model.safetensors"),
        metadata={"format": "pt"},
    )
    with open(os.path.join(config_src, "config.json")) as src, open(os.path.join(path, "config.json"), "w") as dst:
        dst.write(src.read())


def test_old_style_checkpoint_position_ids_and_both_aliases(hf_mlm, hf_dirs, tmp_path):
    state = dict(hf_mlm.state_dict())  # holds both decoder aliases
    assert set(TIED) <= set(state)
    state["roberta.embeddings.position_ids"] = torch.arange(66).unsqueeze(0)
    _write_state(tmp_path / "old", state, hf_dirs / "single")
    model, info = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "old", output_loading_info=True)
    _no_info(info)
    _assert_same_weights(model, hf_mlm.state_dict())


def test_bias_taken_from_decoder_alias(hf_mlm, hf_dirs, tmp_path):
    state = {k: v for k, v in hf_mlm.state_dict().items() if k not in ("lm_head.bias", "lm_head.decoder.weight")}
    _write_state(tmp_path / "alias", state, hf_dirs / "single")
    model, info = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "alias", output_loading_info=True)
    _no_info(info)
    _assert_close(model.lm_head.bias, hf_mlm.lm_head.bias.detach(), "lm_head.bias", atol=0)
    # only the decoder names stored (a conversion may keep either name of a tied pair)
    state = {
        k: v
        for k, v in hf_mlm.state_dict().items()
        if k not in ("lm_head.bias", "roberta.embeddings.word_embeddings.weight")
    }
    _write_state(tmp_path / "decoder-only", state, hf_dirs / "single")
    model, info = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "decoder-only", output_loading_info=True)
    _no_info(info)
    _assert_same_weights(model, hf_mlm.state_dict())
    base, info = load_pretrained(xlmrxl.XLMRobertaXLModel, tmp_path / "decoder-only", output_loading_info=True)
    assert info["missing_keys"] == ["pooler.dense.bias", "pooler.dense.weight"], info
    assert torch.equal(base.embeddings.word_embeddings.weight, hf_mlm.roberta.embeddings.word_embeddings.weight)


def test_mlm_checkpoint_into_base_model(hf_mlm, hf_dirs, caplog):
    caplog.set_level("INFO", logger="xlmrxl")
    model, info = xlmrxl.XLMRobertaXLModel.from_pretrained(hf_dirs / "single", output_loading_info=True)
    logged = {r.levelname: r.getMessage() for r in caplog.records if "initializ" in r.getMessage()}
    assert "pooler.dense.weight" in logged.get("WARNING", ""), logged
    assert "lm_head.dense.weight" in logged.get("INFO", ""), logged
    assert set(info["unexpected_keys"]) == {k for k in hf_mlm.state_dict() if k.startswith("lm_head.")} - set(TIED)
    assert info["missing_keys"] == ["pooler.dense.bias", "pooler.dense.weight"], info
    theirs, their_info = _hf_load("XLMRobertaXLModel", hf_dirs / "single")
    assert sorted(their_info["missing_keys"]) == info["missing_keys"]
    assert sorted(their_info["unexpected_keys"]) == info["unexpected_keys"]
    ref = {k[len("roberta.") :]: v for k, v in hf_mlm.state_dict().items() if k.startswith("roberta.")}
    for k, v in model.state_dict().items():
        if not k.startswith("pooler."):
            assert torch.equal(v, ref[k]), k
    w = model.pooler.dense.weight
    assert w.is_meta is False and w.std().item() == pytest.approx(0.02, rel=0.3), "pooler not initialised by init"
    ids = _ids()
    with torch.no_grad():
        _assert_close(
            model(input_ids=ids).last_hidden_state, theirs(input_ids=ids).last_hidden_state, "last_hidden_state"
        )


def test_base_checkpoint_into_head_model_and_config_overrides(tmp_path, caplog):
    torch.manual_seed(2)
    base = _hf_model("XLMRobertaXLModel")
    base.save_pretrained(tmp_path / "base")
    model, info = xlmrxl.XLMRobertaXLForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=3, output_loading_info=True
    )
    assert model.config.num_labels == 3
    assert info["unexpected_keys"] == ["roberta.pooler.dense.bias", "roberta.pooler.dense.weight"], info
    assert info["missing_keys"] == sorted(k for k, _ in model.named_parameters() if k.startswith("classifier.")), info
    _, their_info = _hf_load("XLMRobertaXLForSequenceClassification", tmp_path / "base")
    # transformers 5.x names a base checkpoint's unexpected keys as stored (no "roberta." prefix)
    their_unexpected = sorted(k if k.startswith("roberta.") else "roberta." + k for k in their_info["unexpected_keys"])
    assert their_unexpected == info["unexpected_keys"], their_info
    assert sorted(their_info["missing_keys"]) == info["missing_keys"], their_info
    assert any(
        "newly initialized" in r.message and "classifier.out_proj.weight" in r.message
        for r in caplog.records
        if r.levelname == "WARNING"
    ), "missing keys were not reported in a warning"
    for k, v in base.state_dict().items():
        if not k.startswith("pooler."):
            assert torch.equal(model.state_dict()["roberta." + k], v), k
    with torch.no_grad():
        logits = model(input_ids=_ids()).logits
    assert logits.shape == (2, 3)


def test_add_pooling_layer_goes_to_the_constructor(hf_dirs):
    model, info = xlmrxl.XLMRobertaXLModel.from_pretrained(
        hf_dirs / "single", add_pooling_layer=False, output_loading_info=True
    )
    assert model.pooler is None and info["missing_keys"] == []


def test_persistent_buffers_round_trip(hf_dirs, tmp_path):
    """Buffers (as int4 QuantLinear modules keep them) load and save through the same path as parameters: integer
    ones keep their dtype, floating ones follow dtype=."""

    class WithBuffers(xlmrxl.XLMRobertaXLForMaskedLM):
        def __init__(self, config):
            super().__init__(config)
            self.lm_head.dense.register_buffer("qweight", torch.zeros(8, 16, dtype=torch.int32))
            self.lm_head.dense.register_buffer("scales", torch.ones(8, 2))

    class WithScratch(WithBuffers):
        def __init__(self, config):
            super().__init__(config)
            self.lm_head.dense.register_buffer("scratch", torch.zeros(3), persistent=False)

    src, info = load_pretrained(WithBuffers, hf_dirs / "single", output_loading_info=True)
    assert info["missing_keys"] == ["lm_head.dense.qweight", "lm_head.dense.scales"], info
    with torch.no_grad():
        src.lm_head.dense.qweight.copy_(torch.randint(-(2**31), 2**31 - 1, (8, 16), dtype=torch.int32))
        src.lm_head.dense.scales.copy_(torch.rand(8, 2) + 0.5)
    save_pretrained(src, tmp_path / "buf")
    with pytest.raises(RuntimeError, match=r"meta device after loading: lm_head\.dense\.scratch"):
        load_pretrained(WithScratch, tmp_path / "buf")

    model, info = load_pretrained(WithBuffers, tmp_path / "buf", dtype=torch.bfloat16, output_loading_info=True)
    _no_info(info)
    qw, sc = model.lm_head.dense.qweight, model.lm_head.dense.scales
    assert qw.dtype == torch.int32 and sc.dtype == torch.bfloat16, (qw.dtype, sc.dtype)
    assert torch.equal(qw, src.lm_head.dense.qweight)
    assert torch.equal(sc, src.lm_head.dense.scales.to(torch.bfloat16))


def test_missing_config_and_config_argument(hf_mlm, hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs / "single", tmp_path / "nocfg")
    os.remove(d / "config.json")
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*nocfg"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d)
    cfg = xlmrxl.XLMRobertaXLConfig.from_pretrained(hf_dirs / "single")
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, d, config=cfg, layer_norm_eps=1e-6)
    assert model.config.layer_norm_eps == 1e-6 and cfg.layer_norm_eps == 1e-5, "config= must not be modified"
    _assert_same_weights(model, hf_mlm.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# dtype, device, progress, quantization seam
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "bf16"])
def test_low_precision_load(hf_mlm, hf_dirs, dtype):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single", dtype=dtype)
    target = parsing.parse_dtype(dtype)
    assert {p.dtype for p in model.parameters()} == {target}
    _assert_same_weights(model, hf_mlm.state_dict(), dtype=target)
    assert model.config.dtype in (target, parsing.dtype_name(target))
    ids = _ids()
    with torch.no_grad():
        truth = hf_mlm(input_ids=ids).logits
        ours = model(input_ids=ids).logits
        plain = _hf_model().to(target).eval()
        plain.load_state_dict(hf_mlm.state_dict())
        plain_err = (plain(input_ids=ids).logits.float() - truth).abs().max().item()
    assert ours.dtype == target and ours.shape == truth.shape
    err = (ours.float() - truth).abs().max().item()
    assert err <= 2 * plain_err + 1e-6, f"{target}: error {err:.3g} vs plain PyTorch {plain_err:.3g}"


def test_dtype_auto_and_torch_dtype_alias(hf_dirs, tmp_path):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single", dtype=torch.bfloat16)
    save_pretrained(model, tmp_path / "bf16")
    with open(tmp_path / "bf16" / "config.json") as fh:
        assert json.load(fh)["torch_dtype"] == "bfloat16"
    auto = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "bf16", dtype="auto")
    assert auto.lm_head.bias.dtype == torch.bfloat16
    default = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "bf16")
    assert default.lm_head.bias.dtype == torch.float32, "dtype=None must give float32 (transformers 4.56 default)"
    alias = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "bf16", torch_dtype="float16")
    assert alias.lm_head.bias.dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype='float17'.*bfloat16"):
        load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, tmp_path / "bf16", dtype="float17")


def test_progress_bar_and_backend(hf_dirs, capsys):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single", progress=True, backend="reference")
    assert "Loading weights" in capsys.readouterr().err
    assert model.backend.name == "reference", model.backend
    assert all(m.backend is model.backend for m in model.modules() if hasattr(m, "backend")), "backend not shared"
    load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single", progress=False)
    assert "Loading weights" not in capsys.readouterr().err


def test_quantization_hook_seam(hf_dirs, monkeypatch):
    seen = []

    def load_hook(model, quantization, *, dtype, device):
        assert quantization == "int4-test" and dtype == torch.float32 and device == torch.device("cpu")

        def hook(name, module):
            if isinstance(module, torch.nn.Linear):
                assert not module.weight.is_meta, f"{name}: hook ran before the weights arrived"
                seen.append(name)
            return None

        return hook

    finished = []

    def finish_loading(model, quantization, *, method=None, options=None):
        # the loader's second seam call: after eval(), with the loaded model (gptq quantizes here)
        assert quantization == "int4-test" and method is None and options is None and not model.training
        finished.append(model)
        return model

    monkeypatch.setattr(quantization, "load_hook", load_hook)
    monkeypatch.setattr(quantization, "finish_loading", finish_loading)
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single", quantization="int4-test")
    assert "roberta.encoder.layer.0.attention.self.query" in seen and "lm_head.decoder" in seen, seen
    assert finished == [model], "finish_loading must run once, on the loaded model"


# ---------------------------------------------------------------------------------------------------------------------
# saving: sharding, shared storage, .bin, atomicity
# ---------------------------------------------------------------------------------------------------------------------
def test_sharded_round_trip_keeps_other_files_and_drops_stale_shards(hf_dirs, tmp_path):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single")
    out = tmp_path / "rt"
    save_pretrained(model, out, max_shard_size="20KB")
    n_small = len([f for f in os.listdir(out) if f.endswith(".safetensors")])
    (out / "tokenizer_config.json").write_text("{}")
    (out / "sentencepiece.bpe.model").write_bytes(b"spm")
    with open(out / "model.safetensors.index.json") as fh:
        index = json.load(fh)
    total = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k not in TIED)
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"]) == set(model.state_dict()) - set(TIED)
    again = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, out)
    _assert_same_weights(again, model.state_dict())
    save_pretrained(model, out, max_shard_size=60_000)  # fewer shards: the old ones must go
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert 1 < len(shards) < n_small and all(f"-of-{len(shards):05d}" in f for f in shards), files
    assert "tokenizer_config.json" in files and (out / "sentencepiece.bpe.model").read_bytes() == b"spm"
    save_pretrained(model, out)  # one file: index and shards gone
    assert sorted(os.listdir(out)) == [
        "config.json",
        "model.safetensors",
        "sentencepiece.bpe.model",
        "tokenizer_config.json",
    ]
    _assert_same_weights(load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, out), model.state_dict())


def test_shared_storage_views_save_fine(hf_mlm, hf_dirs, tmp_path):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single")
    from xlmrxl.fast import fuse_qkv

    sa = model.roberta.encoder.layer[0].attention.self
    W, _ = fuse_qkv(sa)
    assert sa.key.weight.untyped_storage().data_ptr() == W.untyped_storage().data_ptr(), "views were not made"
    for safe in (True, False):
        out = tmp_path / f"fused-{safe}"
        save_pretrained(model, out, safe_serialization=safe, max_shard_size="25KB")
        again, info = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, out, output_loading_info=True)
        _no_info(info)
        _assert_same_weights(again, hf_mlm.state_dict())
    theirs, info = _hf_load("XLMRobertaXLForMaskedLM", tmp_path / "fused-False")
    _no_info(info)


def test_bin_save_loads_in_transformers(hf_mlm, hf_dirs, tmp_path):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "bin")
    save_pretrained(model, tmp_path / "b", safe_serialization=False)
    assert sorted(os.listdir(tmp_path / "b")) == ["config.json", "pytorch_model.bin"]
    theirs, info = _hf_load("XLMRobertaXLForMaskedLM", tmp_path / "b")
    _no_info(info)
    _assert_same_weights(model, theirs.state_dict())


def test_failed_save_leaves_the_directory_as_it_was(hf_dirs, tmp_path, monkeypatch):
    model = load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, hf_dirs / "single")
    out = tmp_path / "atomic"
    save_pretrained(model, out)
    (out / "tokenizer.json").write_text('{"keep": true}')
    before, inode = _dir_snapshot(out), os.stat(out).st_ino
    with torch.no_grad():
        model.lm_head.bias.add_(1.0)
    calls = []
    real = save_mod.write_safetensors

    def failing(path, tensors, metadata):
        calls.append(path)
        if len(calls) == 2:
            real(path, dict(list(tensors.items())[: len(tensors) // 2]), metadata)  # a half-written shard ...
            raise OSError(28, "No space left on device (simulated)")  # ... then the crash
        real(path, tensors, metadata)

    monkeypatch.setattr(save_mod, "write_safetensors", failing)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(model, out, max_shard_size="20KB")
    assert len(calls) == 2
    assert _dir_snapshot(out) == before, "a failed save changed the target directory (or left temporary files)"
    assert os.stat(out).st_ino == inode and sorted(os.listdir(tmp_path)) == ["atomic"], os.listdir(tmp_path)
    # a failure in a brand-new directory leaves nothing at all
    calls.clear()
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(model, tmp_path / "fresh", max_shard_size="20KB")
    assert sorted(os.listdir(tmp_path)) == ["atomic"]
    monkeypatch.setattr(save_mod, "write_safetensors", real)
    for shard in ("20KB", None, "20KB"):
        with torch.no_grad():
            model.lm_head.bias.add_(1.0)
        save_pretrained(model, out, **({"max_shard_size": shard} if shard else {}))
        assert (out / "tokenizer.json").read_text() == '{"keep": true}'
        assert torch.equal(load_pretrained(xlmrxl.XLMRobertaXLForMaskedLM, out).lm_head.bias, model.lm_head.bias)
        assert os.stat(out).st_ino == inode and sorted(os.listdir(tmp_path)) == ["atomic"], os.listdir(tmp_path)
        assert not [f for f in os.listdir(out) if f.startswith(".")], os.listdir(out)
