"""Shared by the save tests: tiny models with labelled configs, layouts, step counting for kill -9, snapshots."""

import os
import signal

import torch
from conftest import tiny_config_kwargs

import xlmrxl
from xlmrxl.checkpoint import formats as formats_mod

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


def _snapshot(path):
    return {
        os.path.relpath(os.path.join(root, f), path): open(os.path.join(root, f), "rb").read()
        for root, _, files in os.walk(path)
        for f in files
    }
