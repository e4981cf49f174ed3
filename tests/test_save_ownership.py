"""What a save records and may delete (xlmrxl.checkpoint.record) and how it fails: the config's digest is checked at
load, naming both files; a save deletes only files an earlier xlmrxl save recorded as its own; a failed save (full
disk, an empty path) is a clear error and leaves nothing."""

import json
import os
import shutil

import pytest
import torch
from _save_helpers import CLS, LAYOUTS, _model, _same, _snapshot, _state
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.checkpoint import formats as formats_mod
from xlmrxl.checkpoint import load_pretrained, save_pretrained
from xlmrxl.checkpoint.errors import SaveFailedError


# ---------------------------------------------------------------------------------------------------------------------
# the config's digest
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout,weights",
    [
        ("single", "model.safetensors"),
        ("sharded", "model.safetensors.index.json"),
        ("bin", "pytorch_model.bin"),
        ("bin-sharded", "pytorch_model.bin.index.json"),
    ],
)
def test_a_config_of_another_save_is_named_with_the_weights_and_used(tmp_path, caplog, layout, weights):
    """config.json copied from another save (or edited): used as it is, as transformers does, with a warning naming
    both files; the next save records it."""
    d, other = tmp_path / "d", tmp_path / "other"
    save_pretrained(_model(0, "old"), d, **LAYOUTS[layout])
    save_pretrained(_model(0, "new"), other, **LAYOUTS[layout])  # same shapes, other labels
    shutil.copy(other / "config.json", d / "config.json")
    loaded = load_pretrained(CLS, d)
    assert loaded.config.id2label[0] == "new-a"
    msg = caplog.text
    assert str(d / "config.json") in msg and str(d / weights) in msg and "save the model again" in msg, msg
    caplog.clear()
    save_pretrained(loaded, d, **LAYOUTS[layout])  # records the new config
    assert load_pretrained(CLS, d).config.id2label[0] == "new-a"
    assert "not the config saved" not in caplog.text


def test_the_digest_keeps_single_file_saves_byte_identical(tmp_path):
    model = _model(0)
    for name in ("a", "b"):
        save_pretrained(model, tmp_path / name)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------------------------------------------------------
# what a save may delete
# ---------------------------------------------------------------------------------------------------------------------
def test_a_save_deletes_only_files_our_saves_recorded(tmp_path):
    d = tmp_path / "own"
    d.mkdir()
    model = _model(0)
    dead = 4_000_000 + os.getpid() % 1000  # a pid that no process has
    user = {
        "adapter_model.safetensors": b"the user's adapter",
        "train.bin": b"the user's data",
        "model-00001-of-00002.safetensors": b"someone else's shard",
        f".xlmrxl-tmp.{dead}.0123abcd.model.safetensors": b"looks like ours",
        ".xlmrxl-tmp.1.0123abcd.config.json": b"looks like ours",
        ".xlmrxl-save.journal.bak": b"looks like ours",
        "pytorch_model-00001-of-00002.bin": b"someone else's shard",
    }
    for name, data in user.items():
        (d / name).write_bytes(data)
    scratch = d / f".xlmrxl-tmp.{dead}.0123abcd.model-00001-of-00002.safetensors.d"
    scratch.mkdir()
    (scratch / "weights.safetensors").write_bytes(b"looks like ours")
    foreign = {"metadata": {"total_size": 1}, "weight_map": {"a": "adapter_model.safetensors", "b": "train.bin"}}
    foreign["weight_map"]["c"] = "model-00001-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(foreign))
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"x": "pytorch_model-00001-of-00002.bin"}})
    )
    want = _state(model)
    for layout in ("sharded", "single", "bin-sharded", "bin", "sharded60", "sharded"):
        save_pretrained(model, d, **LAYOUTS[layout])
        assert all((d / n).read_bytes() == data for n, data in user.items()), layout
        assert (scratch / "weights.safetensors").read_bytes() == b"looks like ours"
        assert _same(want, load_pretrained(CLS, d).state_dict()), layout
    # our own index, edited to name the user's files (with sizes in our record too): they stay, our shards go
    index = json.loads((d / "model.safetensors.index.json").read_text())
    ours = sorted(set(index["weight_map"].values()))
    for n in ("adapter_model.safetensors", "train.bin"):
        index["weight_map"][f"extra.{n}"] = n
        index["metadata"]["xlmrxl_shard_sizes"][n] = len(user[n])
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    save_pretrained(model, d)
    assert all((d / n).read_bytes() == data for n, data in user.items())
    assert not [n for n in ours if (d / n).exists()], "the shards of our previous save were left behind"
    assert sorted(f for f in os.listdir(d) if f.endswith((".safetensors", ".bin")) and f[0] != ".") == sorted(
        ["model.safetensors"] + [n for n in user if n.endswith((".safetensors", ".bin")) and not n.startswith(".")]
    )


def test_weights_files_of_other_tools_stay_unless_they_would_hide_the_save(tmp_path):
    from safetensors.torch import save_file

    d = tmp_path / "w"
    d.mkdir()
    torch.save({"x": torch.ones(2)}, d / "pytorch_model.bin")  # another tool's, looked at after model.safetensors
    theirs = (d / "pytorch_model.bin").read_bytes()
    model = _model(0)
    save_pretrained(model, d)
    assert (d / "pytorch_model.bin").read_bytes() == theirs
    assert _same(_state(model), load_pretrained(CLS, d).state_dict())
    save_pretrained(model, d, safe_serialization=False)  # the save replaces pytorch_model.bin, and ours goes
    assert not (d / "model.safetensors").exists()
    save_pretrained(model, d, max_shard_size="200KB")  # our .bin goes too
    assert not (d / "pytorch_model.bin").exists()
    save_file({"x": torch.ones(2)}, str(d / "model.safetensors"))  # another tool's, which would hide a .bin save
    save_pretrained(model, d, safe_serialization=False)
    assert not (d / "model.safetensors").exists() and not (d / "model.safetensors.index.json").exists()
    assert _same(_state(model), load_pretrained(CLS, d).state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# failed saves: clear errors, nothing left
# ---------------------------------------------------------------------------------------------------------------------
def test_an_empty_save_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _model(0)
    for bad in ("", "   "):
        with pytest.raises(ValueError, match=r"save_directory='\s*' is empty.*save_pretrained\('my-model'\)"):
            model.save_pretrained(bad)
        with pytest.raises(ValueError, match="is empty"):
            save_pretrained(model, bad)
    with pytest.raises(TypeError, match="save_directory=None"):
        save_pretrained(model, None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "bin-sharded"])
def test_a_full_disk_is_a_clear_error_and_leaves_the_old_checkpoint(tmp_path, monkeypatch, layout):
    """safetensors' and torch.save's own failures on a full disk (simulated: the real ones are in
    test_a_really_full_disk...); the error names the directory, the free space and the fix; nothing is left."""
    from safetensors import SafetensorError

    from xlmrxl.checkpoint import save as save_mod

    d = tmp_path / "full"
    save_pretrained(_model(0, "old"), d, **LAYOUTS[layout])
    before = _snapshot(d)

    def save_file(tensors, path, metadata=None):
        with open(os.path.join(os.path.dirname(path), ".tmpAbC123"), "wb") as fh:
            fh.write(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def torch_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(formats_mod, "save_file", save_file)
    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(save_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    for target in (d, tmp_path / "fresh"):
        with pytest.raises(SaveFailedError) as err:
            save_pretrained(_model(1, "new"), target, **LAYOUTS[layout])
        msg = str(err.value)
        assert str(target) in msg and "file system is full" in msg and "0.0 MB free" in msg, msg
        assert "Free some space" in msg and "unchanged" in msg and "inline_container" not in msg, msg
    assert _snapshot(d) == before, "a failed save changed the directory or left files"
    assert not (tmp_path / "fresh").exists(), "a failed save left the directory it created"
    monkeypatch.undo()
    assert load_pretrained(CLS, d).config.id2label[0] == "old-a"


def test_a_really_full_disk_during_a_bin_save(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=1200k tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        d = mnt / "ckpt"
        save_pretrained(_model(0, "old"), d, safe_serialization=False)
        before = _snapshot(d)
        big = CLS(xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(hidden_size=128, intermediate_size=256)))
        for kw in ({"safe_serialization": False}, {}, {"max_shard_size": "200KB"}):
            with pytest.raises(SaveFailedError, match=rf"saving into {d} failed .*file system is full .*MB free"):
                save_pretrained(big, d, **kw)
            assert _snapshot(d) == before
        assert load_pretrained(CLS, d).config.id2label[0] == "old-a"
    finally:
        os.system(f"umount {mnt}")


def test_a_save_that_cannot_write_its_journal_leaves_nothing(tmp_path, monkeypatch):
    d = tmp_path / "j"
    save_pretrained(_model(0, "old"), d)
    before = _snapshot(d)
    real_open = open

    def full_open(path, *args, **kwargs):
        if str(path).endswith(".journal.new"):
            fh = real_open(path, *args, **kwargs)
            fh.write("{")
            fh.close()
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(SaveFailedError, match=r"failed while writing the journal: the file system is full"):
        save_pretrained(_model(1, "new"), d)
    monkeypatch.undo()
    assert _snapshot(d) == before and sorted(os.listdir(d)) == sorted(before)
