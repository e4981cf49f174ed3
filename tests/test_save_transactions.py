"""Saves are transactions (xlmrxl.checkpoint.save / journal / lock): kill -9 at every step of a save of each layout
leaves the old or the new checkpoint (weights and config of one save) for xlmrxl, and for transformers after the
roll-forward; concurrent saves serialise on the directory's lock; loads during saves see one save."""

import json
import os
import shutil
import signal
import threading
import time

import pytest
from _save_helpers import CLS, LAYOUTS, _in_child, _model, _same, _state, _Steps, _which

from xlmrxl.checkpoint import formats as formats_mod
from xlmrxl.checkpoint import journal as journal_mod
from xlmrxl.checkpoint import load_pretrained, save_pretrained
from xlmrxl.checkpoint import lock as lock_mod
from xlmrxl.checkpoint.errors import SaveLockTimeout


@pytest.fixture(autouse=True)
def _fast_fsync(monkeypatch):
    """kill -9 loses nothing that was written (the kernel keeps it): fsync, which costs seconds on a busy disk here,
    is only counted as a step."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


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
