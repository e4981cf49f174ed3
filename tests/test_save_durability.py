"""Durable saves (xlmrxl.checkpoint.save): kill -9 at random points of a sharded save, then the directory loads the old
or the new checkpoint (weights and config of one save); the directory keeps its inode, mode and xattrs; files that
are not part of a checkpoint are untouched; nothing is written outside it; temporary files of a crashed save are
removed by the next one; int4 models save at any time with the same bytes."""

import json
import os
import random
import shutil
import signal
import time

import pytest
import torch
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.checkpoint import files as files_mod
from xlmrxl.checkpoint import formats as formats_mod
from xlmrxl.checkpoint import load_pretrained, save_pretrained
from xlmrxl.checkpoint import save as save_mod

CLS = xlmrxl.XLMRobertaXLForMaskedLM
SHARD = "40KB"


def _model(seed=0):
    torch.manual_seed(seed)
    model = CLS(xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs())).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(state, model):
    got = model.state_dict()
    return set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def _snapshot(path):
    out = {}
    for root, dirs, files in os.walk(path):
        for f in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = os.readlink(p) if os.path.islink(p) else open(p, "rb").read()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# kill -9 in the middle of a sharded save
# ---------------------------------------------------------------------------------------------------------------------
class _Steps:
    """Counts the save's file-system steps (writes, fsyncs, renames, unlinks); SIGKILLs the process at step ``at``."""

    def __init__(self, monkeypatch, at):
        self.n, self.at = 0, at
        for mod, name in ((os, "replace"), (os, "unlink"), (os, "fsync"), (formats_mod, "save_file")):
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


def _save_in_child(model, out, monkeypatch, kill_at=None, kill_after=None):
    """Save ``model`` into ``out`` in a forked child that dies by SIGKILL at step ``kill_at`` or after ``kill_after``
    seconds (sent by this process). Returns the child's wait status."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            if kill_at is not None:
                _Steps(monkeypatch, kill_at)
            os.write(w, b"g")
            save_pretrained(model, out, max_shard_size=SHARD)
            os._exit(0)
        except BaseException:
            os._exit(3)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status


def _count_steps(model, out, monkeypatch):
    with monkeypatch.context() as m:
        steps = _Steps(m, at=-1)
        t0 = time.perf_counter()
        save_pretrained(model, out, max_shard_size=SHARD)
        return steps.n, time.perf_counter() - t0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_during_a_sharded_save_leaves_old_or_new(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    old_model, new_model = _model(0), _model(1)
    new_model.config.output_past = f"new-{seed}"  # the new save's config differs too
    old, new = _state(old_model), _state(new_model)
    base = tmp_path / "base"
    save_pretrained(old_model, base, max_shard_size="60KB")  # other shard names and count than the new save's
    (base / "tokenizer_config.json").write_text('{"mine": 1}')
    shutil.copytree(base, tmp_path / "count", symlinks=True)
    n_steps, seconds = _count_steps(new_model, tmp_path / "count", monkeypatch)
    assert n_steps > 20, n_steps
    points = [("step", k) for k in rng.sample(range(1, n_steps + 1), 6)] + [("time", rng.uniform(0, seconds))]
    seen = set()
    for i, (how, where) in enumerate(points):
        d = tmp_path / f"run{i}"
        shutil.copytree(base, d, symlinks=True)
        kw = {"kill_at": where} if how == "step" else {"kill_after": where}
        status = _save_in_child(new_model, d, monkeypatch, **kw)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, f"{how} {where}: child status {status}"
        loaded = load_pretrained(CLS, d)
        which = "old" if _same(old, loaded) else "new" if _same(new, loaded) else None
        assert which is not None, f"kill at {how} {where}: the directory loads a mix of two saves"
        marker = getattr(loaded.config, "output_past", None)
        assert (marker == f"new-{seed}") == (which == "new"), f"kill at {how} {where}: {which} weights, config {marker}"
        assert json.loads((d / "tokenizer_config.json").read_text()) == {"mine": 1}
        seen.add(which)
        # the next save cleans up whatever the killed one left, and succeeds
        save_pretrained(new_model, d, max_shard_size=SHARD)
        assert not [f for f in os.listdir(d) if f.startswith(".")], os.listdir(d)
        assert _same(new, load_pretrained(CLS, d))
        shards = [f for f in os.listdir(d) if f.endswith(".safetensors")]
        index = json.loads((d / "model.safetensors.index.json").read_text())
        assert sorted(shards) == sorted(set(index["weight_map"].values())), "stale shards left behind"
    assert seen, seen


def test_a_shard_from_another_save_is_refused(tmp_path):
    a, b = _model(0), _model(1)
    b.lm_head.bias.data[:5] = 1.0
    save_pretrained(a, tmp_path / "a", max_shard_size=SHARD)
    save_pretrained(b, tmp_path / "b", max_shard_size="60KB")
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    other = sorted(f for f in os.listdir(tmp_path / "b") if f.endswith(".safetensors"))[-1]
    os.replace(tmp_path / "b" / other, tmp_path / "a" / shard)
    with pytest.raises(xlmrxl.checkpoint.CheckpointError, match=r"mixes two saves|different saves"):
        load_pretrained(CLS, tmp_path / "a")


# ---------------------------------------------------------------------------------------------------------------------
# the directory itself, and what is not ours
# ---------------------------------------------------------------------------------------------------------------------
def test_directory_keeps_inode_mode_xattrs_and_foreign_files(tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    out.mkdir()
    os.chmod(out, 0o2770)
    try:
        os.setxattr(out, "user.owner-note", b"keep me")
        has_xattr = True
    except OSError:
        has_xattr = False
    (out / "README.md").write_text("mine")
    (out / "model.safetensors.bak").write_bytes(b"a backup")
    (out / "volume").mkdir()  # stands for a mount inside the checkpoint directory
    (out / "volume" / "data.bin").write_bytes(b"x" * 10)
    os.symlink("README.md", out / "link")
    st = os.stat(out)
    foreign = _snapshot(out)

    # the directory itself must never be renamed, removed or replaced (EBUSY on a mount point)
    real_replace, real_rename, real_rmdir = os.replace, os.rename, os.rmdir

    def guard(real):
        def fn(a, b=None, *args, **kwargs):
            for p in (a, b):
                if p is not None and os.path.realpath(p) == os.path.realpath(out):
                    raise OSError(16, "Device or resource busy (simulated mount point)", str(p))
            return real(a, b, *args, **kwargs) if b is not None else real(a, *args, **kwargs)

        return fn

    monkeypatch.setattr(os, "replace", guard(real_replace))
    monkeypatch.setattr(os, "rename", guard(real_rename))
    monkeypatch.setattr(os, "rmdir", guard(real_rmdir))
    parent_before = (sorted(os.listdir(tmp_path)), os.stat(tmp_path).st_mtime_ns)
    model = _model(0)
    for kw in ({"max_shard_size": SHARD}, {}, {"safe_serialization": False}, {"max_shard_size": "60KB"}):
        save_pretrained(model, out, **kw)
        assert _same(_state(model), load_pretrained(CLS, out)), kw
        after = os.stat(out)
        assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid) == (
            st.st_ino,
            st.st_mode,
            st.st_uid,
            st.st_gid,
        )
        if has_xattr:
            assert os.getxattr(out, "user.owner-note") == b"keep me"
        snap = _snapshot(out)
        assert {k: snap[k] for k in foreign} == foreign, "a file that is not part of the checkpoint changed"
        assert not [f for f in os.listdir(out) if f.startswith(".")], os.listdir(out)
    # nothing was created, renamed or removed beside the directory (a parent that is not writable is fine)
    assert (sorted(os.listdir(tmp_path)), os.stat(tmp_path).st_mtime_ns) == parent_before
    if not has_xattr:
        pytest.skip("the file system refuses user.* xattrs; inode, mode and files were checked")


def test_temp_files_of_a_crashed_save_are_removed_by_the_next(tmp_path, monkeypatch):
    """The next save removes exactly the temporary files its journal lists (safetensors' own ``.tmpXXXXXX`` in our
    scratch directory included); files that merely look like ours stay."""
    out = tmp_path / "c"
    model = _model(0)
    save_pretrained(model, out)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that is surely gone
    lookalikes = [
        out / f".xlmrxl-tmp.{pid}.0123abcd.model-00001-of-00002.safetensors",
        out / ".xlmrxl-tmp.1.0123abcd.model.safetensors",
        out / ".xlmrxl-tmp-not-ours",
        out / ".tmpXyZ789",
    ]
    for f in lookalikes:
        f.write_bytes(b"user file")
    lookalike_dir = out / f".xlmrxl-tmp.{pid}.0123abcd.model-00002-of-00002.safetensors.d"
    lookalike_dir.mkdir()
    (lookalike_dir / ".tmpAbC123").write_bytes(b"user file")
    real_save_file = formats_mod.save_file

    def save_file_then_die(tensors, path, metadata=None):  # a shard half-written by safetensors, then kill -9
        real_save_file(tensors, path, metadata=metadata)
        os.replace(path, os.path.join(os.path.dirname(path), ".tmpAbC123"))
        os.kill(os.getpid(), signal.SIGKILL)

    child = os.fork()
    if child == 0:
        try:
            monkeypatch.setattr(formats_mod, "save_file", save_file_then_die)
            save_pretrained(_model(1), out, max_shard_size=SHARD)
        finally:
            os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status), status
    left = [f for f in os.listdir(out) if f.startswith(".xlmrxl-") and f.endswith(".d")]
    assert len(left) == 2, os.listdir(out)  # the crashed save's scratch directory, and the user's
    assert _same(_state(model), load_pretrained(CLS, out)), "the crash left the old checkpoint"
    save_pretrained(model, out)
    assert all(f.read_bytes() == b"user file" for f in lookalikes)
    assert (lookalike_dir / ".tmpAbC123").read_bytes() == b"user file"
    assert sorted(f for f in os.listdir(out) if f.startswith(".")) == sorted(
        f.name for f in [*lookalikes, lookalike_dir]
    ), "a save leaves no temporary file behind"


def test_index_config_digest_rolls_forward(tmp_path, caplog):
    """Weights committed, config not yet renamed (the crash window of a sharded save of xlmrxl before the journal):
    loads use the pending config, the next save renames it; a config edited by hand after a save wins (with a
    warning naming both files)."""
    out = tmp_path / "r"
    model = _model(0)
    save_pretrained(model, out, max_shard_size=SHARD)
    cfg = json.loads((out / "config.json").read_text())
    pending = out / ".xlmrxl-tmp.999999.00ff.config.json"
    os.replace(out / "config.json", pending)
    (out / "config.json").write_text(json.dumps(dict(cfg, output_past="stale")))
    assert files_mod.pending_config(str(out), {files_mod.CONFIG_SHA_KEY: "0" * 64}) is None
    loaded = load_pretrained(CLS, out)
    assert getattr(loaded.config, "output_past", None) is None and "interrupted" in caplog.text
    save_mod._recover(str(out))
    assert not pending.exists() and json.loads((out / "config.json").read_text()) == cfg
    (out / "config.json").write_text(json.dumps(dict(cfg, output_past="edited by hand")))
    caplog.clear()
    assert load_pretrained(CLS, out).config.output_past == "edited by hand"
    assert "is not the config saved with the weights" in caplog.text and "model.safetensors.index.json" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# int4: views after q/k/v fusion
# ---------------------------------------------------------------------------------------------------------------------
def test_int4_saves_with_the_same_bytes_after_qkv_fusion(tmp_path):
    from xlmrxl.quantization import QuantLinear, quantize

    torch.manual_seed(0)
    cfg = xlmrxl.XLMRobertaXLConfig(**tiny_config_kwargs(hidden_size=128, intermediate_size=256))
    model = quantize(CLS(cfg).eval(), group_size=64)
    save_pretrained(model, tmp_path / "before")
    for layer in model.roberta.encoder.layer:
        sa = layer.attention.self
        QuantLinear.concat((sa.query, sa.key, sa.value), share_storage=True)
    assert not model.roberta.encoder.layer[0].attention.self.key.scales.is_contiguous(), "fusion made no views"
    save_pretrained(model, tmp_path / "after")
    before = (tmp_path / "before" / "model.safetensors").read_bytes()
    assert (tmp_path / "after" / "model.safetensors").read_bytes() == before
    assert (tmp_path / "after" / "config.json").read_text() == (tmp_path / "before" / "config.json").read_text()
    again = load_pretrained(CLS, tmp_path / "after")
    ids = torch.randint(3, 300, (2, 7))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_alternate_shard_names_load_in_transformers_and_foreign_names_stay(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _model(0)
    out = tmp_path / "alt"
    save_pretrained(model, out, max_shard_size=SHARD)
    (out / "notes.md").write_text("mine")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.bias"] = "notes.md"  # a crafted index naming a file of the user's
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    save_pretrained(model, out, max_shard_size=SHARD)  # the standard names were live: alternates now
    assert (out / "notes.md").read_text() == "mine"
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert shards and all(".1.safetensors" in f for f in shards), shards
    theirs, info = transformers.XLMRobertaXLForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = torch.randint(3, 300, (2, 7))
    with torch.no_grad():
        err = (theirs(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
    assert err <= 1e-5, f"transformers on our alternate shard names: max error {err:.3g}"
