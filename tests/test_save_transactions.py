"""Saves are transactions (xlmrxl.checkpoint.save / journal / lock / record): kill -9 at every step of a save of each
layout leaves the old or the new checkpoint (weights and config of one save) for xlmrxl, and for transformers after
the roll-forward; concurrent saves serialise on the directory's lock; the config's digest is checked at load; a save
deletes only files an earlier xlmrxl save recorded as its own; failed saves leave nothing and say why."""

import json
import os
import shutil
import signal
import threading
import time

import pytest
import torch
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.checkpoint import CheckpointError, load_pretrained, save_pretrained
from xlmrxl.checkpoint import formats as formats_mod
from xlmrxl.checkpoint import journal as journal_mod
from xlmrxl.checkpoint import lock as lock_mod
from xlmrxl.checkpoint.errors import SaveFailedError, SaveLockTimeout

CLS = xlmrxl.XLMRobertaXLForMaskedLM
LAYOUTS = {
    "single": {},
    "sharded": {"max_shard_size": "200KB"},
    "sharded60": {"max_shard_size": "120KB"},
    "bin": {"safe_serialization": False},
    "bin-sharded": {"safe_serialization": False, "max_shard_size": "200KB"},
}


def _model(seed, label="old"):
    torch.manual_seed(seed)
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(), id2label={0: f"{label}-a", 1: f"{label}-b"})
    model = CLS(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(state, sd):
    return set(state) <= set(sd) and all(torch.equal(sd[k].to(state[k].dtype), state[k]) for k in state)


def _which(loaded_sd, label, old, new):
    """'old' / 'new' when the weights and the config's labels are those of one save, else an AssertionError."""
    which = "old" if _same(old, loaded_sd) else "new" if _same(new, loaded_sd) else None
    assert which is not None, "the directory loads a mix of two saves' weights"
    assert label == f"{which}-a", f"{which} weights with the config of the other save ({label})"
    return which


@pytest.fixture(autouse=True)
def _fast_fsync(monkeypatch):
    """kill -9 loses nothing that was written (the kernel keeps it): fsync, which costs seconds on a busy disk here,
    is only counted as a step."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


class _Steps:
    """Counts the save's file-system steps (writes, fsyncs, renames, unlinks); SIGKILLs the process at step ``at``."""

    def __init__(self, monkeypatch, at):
        self.n, self.at = 0, at
        for mod, name in ((os, "replace"), (os, "unlink"), (os, "fsync"), (os, "rmdir"), (formats_mod, "save_file")):
            monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name)))

    def _wrap(self, fn):
        def wrapped(*args, **kwargs):
            self._step()
            out = fn(*args, **kwargs)
            self._step()
            return out

        return wrapped

    def _step(self):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def _in_child(fn):
    """Run ``fn()`` in a forked child; its wait status."""
    pid = os.fork()
    if pid == 0:  # never returns into pytest
        code = 3
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


# ---------------------------------------------------------------------------------------------------------------------
# kill -9 at every step of each layout
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "old_layout,new_layout",
    [
        ("bin-sharded", "single"),
        ("single", "single"),
        ("sharded60", "sharded"),
        ("single", "bin"),
        ("bin", "bin-sharded"),
    ],
)
def test_kill_9_at_every_step_loads_old_or_new_in_xlmrxl_and_transformers(
    tmp_path, monkeypatch, old_layout, new_layout
):
    transformers = pytest.importorskip("transformers")
    old_model, new_model = _model(0, "old"), _model(1, "new")
    old, new = _state(old_model), _state(new_model)
    base = tmp_path / "base"
    save_pretrained(old_model, base, **LAYOUTS[old_layout])
    (base / "tokenizer_config.json").write_text('{"mine": 1}')
    (base / "adapter_model.safetensors").write_bytes(b"the user's adapter")
    shutil.copytree(base, tmp_path / "count", symlinks=True)
    with monkeypatch.context() as m:
        steps = _Steps(m, at=-1)
        save_pretrained(new_model, tmp_path / "count", **LAYOUTS[new_layout])
    n_steps = steps.n
    assert n_steps > 10, n_steps
    seen = {}
    for k in range(1, n_steps + 1):
        d = tmp_path / f"k{k}"
        shutil.copytree(base, d, symlinks=True)

        def crash(d=d, k=k):
            _Steps(monkeypatch, k)
            save_pretrained(new_model, d, **LAYOUTS[new_layout])

        status = _in_child(crash)
        assert os.WIFSIGNALED(status), f"step {k}: the save was not killed ({status})"
        loaded = load_pretrained(CLS, d)  # rolls an interrupted save forward
        which = _which(loaded.state_dict(), loaded.config.id2label[0], old, new)
        seen.setdefault(which, k)
        assert not os.path.exists(d / journal_mod.JOURNAL_NAME), f"step {k}: the load did not roll forward"
        assert not [f for f in os.listdir(d) if f.startswith(".")], f"step {k}: left {os.listdir(d)}"
        theirs, info = transformers.XLMRobertaXLForMaskedLM.from_pretrained(d, output_loading_info=True)
        assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), (k, info)
        assert _which(theirs.state_dict(), theirs.config.id2label[0], old, new) == which, f"step {k}: transformers"
        assert (d / "adapter_model.safetensors").read_bytes() == b"the user's adapter"
        assert json.loads((d / "tokenizer_config.json").read_text()) == {"mine": 1}
        shutil.rmtree(d)
    assert set(seen) == {"old", "new"}, seen


def test_a_load_rolls_a_committed_save_forward_and_a_writing_one_back(tmp_path, monkeypatch):
    """The journal's two states: killed just after the commit point (the load finishes the save) and just before it
    (the load removes the temporary files)."""
    old_model, new_model = _model(0, "old"), _model(1, "new")
    real_write = journal_mod.write
    for state, want in (("commit", "new"), ("writing", "old")):
        d = tmp_path / state
        save_pretrained(old_model, d, max_shard_size="40KB")

        def crash(state=state, d=d):
            def write(directory, entry):
                real_write(directory, entry)
                if entry["state"] == state and state == "commit":
                    os.kill(os.getpid(), signal.SIGKILL)

            def save_file(*a, **kw):  # dies while writing the first shard, the journal in state "writing"
                os.kill(os.getpid(), signal.SIGKILL)

            monkeypatch.setattr(journal_mod, "write", write)
            if state == "writing":
                monkeypatch.setattr(formats_mod, "save_file", save_file)
            save_pretrained(new_model, d, max_shard_size="40KB")

        assert os.WIFSIGNALED(_in_child(crash))
        assert json.loads((d / journal_mod.JOURNAL_NAME).read_text())["state"] == state
        loaded = load_pretrained(CLS, d)
        assert _which(loaded.state_dict(), loaded.config.id2label[0], _state(old_model), _state(new_model)) == want
        assert not [f for f in os.listdir(d) if f.startswith(".")], os.listdir(d)


# ---------------------------------------------------------------------------------------------------------------------
# concurrent saves: the lock
# ---------------------------------------------------------------------------------------------------------------------
def test_concurrent_saves_leave_exactly_one_save(tmp_path):
    a, b = _model(0, "old"), _model(1, "new")
    sa, sb = _state(a), _state(b)
    pairs = [("single", "sharded"), ("sharded", "bin"), ("bin-sharded", "single"), ("sharded", "sharded60")]
    for i in range(8):
        d = tmp_path / f"c{i}"
        if i % 2:
            save_pretrained(_model(2, "older"), d, max_shard_size="120KB")  # an existing checkpoint
        la, lb = pairs[i % len(pairs)]
        r, w = os.pipe()

        def save(model, layout):
            os.close(w)
            os.read(r, 1)  # both start together
            save_pretrained(model, d, **LAYOUTS[layout])

        pids = []
        for model, layout in ((a, la), (b, lb)):
            pid = os.fork()
            if pid == 0:
                code = 3
                try:
                    save(model, layout)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(r)
        os.write(w, b"gg")
        os.close(w)
        assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids), f"try {i}: a save failed"
        loaded = load_pretrained(CLS, d)
        which = _which(loaded.state_dict(), loaded.config.id2label[0], sa, sb)
        assert sorted(f for f in os.listdir(d) if f.startswith(".")) == [], f"try {i}: {os.listdir(d)}"
        layout = LAYOUTS[la if which == "old" else lb]
        weights = sorted(f for f in os.listdir(d) if f.endswith((".safetensors", ".bin")))
        index = [f for f in os.listdir(d) if f.endswith(".index.json")]
        if index:
            assert weights == sorted(set(json.loads((d / index[0]).read_text())["weight_map"].values())), weights
        else:
            assert weights == [
                "pytorch_model.bin" if layout.get("safe_serialization") is False else "model.safetensors"
            ]


def test_a_second_save_waits_for_the_lock_or_times_out(tmp_path):
    d = tmp_path / "l"
    save_pretrained(_model(0, "old"), d)
    new = _model(1, "new")
    fd = lock_mod.acquire(str(d))
    try:
        t0 = time.monotonic()
        with pytest.raises(SaveLockTimeout, match=r"another save into .*l is still running \(pid \d+ holds .*timeout="):
            new.save_pretrained(d, timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 10
        with pytest.raises(ValueError, match="timeout=-1"):
            save_pretrained(new, d, timeout=-1)
        threading.Timer(0.5, lock_mod.release, (str(d), fd)).start()
        fd = None
        t0 = time.monotonic()
        new.save_pretrained(d)  # waits for the lock, then saves
        assert time.monotonic() - t0 >= 0.4
    finally:
        if fd is not None:
            lock_mod.release(str(d), fd)
    assert load_pretrained(CLS, d).config.id2label[0] == "new-a"
    assert not (d / lock_mod.LOCK_NAME).exists()


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
def test_a_config_of_another_save_is_refused_naming_both_files(tmp_path, layout, weights):
    d, other = tmp_path / "d", tmp_path / "other"
    save_pretrained(_model(0, "old"), d, **LAYOUTS[layout])
    save_pretrained(_model(0, "new"), other, **LAYOUTS[layout])  # same shapes, other labels
    shutil.copy(other / "config.json", d / "config.json")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(CLS, d)
    msg = str(err.value)
    assert str(d / "config.json") in msg and str(d / weights) in msg and "config=" in msg, msg
    on_purpose = load_pretrained(CLS, d, config=xlmrxl.XLMRobertaXLConfig.from_pretrained(d))
    assert on_purpose.config.id2label[0] == "new-a"
    save_pretrained(on_purpose, d, **LAYOUTS[layout])  # records the new config
    assert load_pretrained(CLS, d).config.id2label[0] == "new-a"


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


def _snapshot(path):
    return {
        os.path.relpath(os.path.join(root, f), path): open(os.path.join(root, f), "rb").read()
        for root, _, files in os.walk(path)
        for f in files
    }


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


def test_kill_9_at_every_step_of_a_first_save_leaves_nothing_or_the_new_checkpoint(tmp_path, monkeypatch):
    new_model = _model(1, "new")
    with monkeypatch.context() as m:
        steps = _Steps(m, at=-1)
        save_pretrained(new_model, tmp_path / "count", max_shard_size="200KB")
    seen = set()
    for k in range(1, steps.n + 1):
        d = tmp_path / f"k{k}"

        def crash(d=d, k=k):
            _Steps(monkeypatch, k)
            save_pretrained(new_model, d, max_shard_size="200KB")

        assert os.WIFSIGNALED(_in_child(crash)), k
        try:
            loaded = load_pretrained(CLS, d)
        except FileNotFoundError:
            seen.add("nothing")
            assert not d.exists() or os.listdir(d) == [], f"step {k}: left {os.listdir(d)}"
        else:
            assert _same(_state(new_model), loaded.state_dict()) and loaded.config.id2label[0] == "new-a", k
            assert not [f for f in os.listdir(d) if f.startswith(".")], f"step {k}: left {os.listdir(d)}"
            seen.add("new")
    assert seen == {"nothing", "new"}, seen


def test_loads_during_saves_see_one_save(tmp_path):
    """A load while another process saves: never the weights of one save with the config of the other."""
    a, b = _model(0, "old"), _model(1, "new")
    sa, sb = _state(a), _state(b)
    d = tmp_path / "busy"
    save_pretrained(a, d)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(r)
            for i in range(12):
                save_pretrained(b if i % 2 == 0 else a, d, **LAYOUTS[("sharded", "single", "bin")[i % 3]])
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.set_blocking(r, False)
    loads = 0
    while True:
        try:
            done = os.read(r, 1) == b""
        except BlockingIOError:
            done = False
        loaded = load_pretrained(CLS, d)
        _which(loaded.state_dict(), loaded.config.id2label[0], sa, sb)
        loads += 1
        if done:
            break
    os.close(r)
    assert os.waitpid(pid, 0)[1] == 0 and loads > 1


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


def test_a_file_system_without_locks_still_saves_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_mod.fcntl, "flock", no_flock)
    model = _model(0)
    save_pretrained(model, tmp_path / "nfs")
    assert "cannot lock files" in caplog.text
    assert _same(_state(model), load_pretrained(CLS, tmp_path / "nfs").state_dict())
    assert not [f for f in os.listdir(tmp_path / "nfs") if f.startswith(".")]
