"""Transactional ``save_pretrained``: under the directory's lock, every file written beside the old ones, one commit.

The target directory is never replaced, moved or re-created (it keeps its inode, owner, mode, xattrs and whatever is
mounted inside it; it is created only when missing, so a mount point or a non-writable parent is fine). A save:

1. takes the directory's lock (:mod:`.lock`: a second save waits, or fails after ``timeout`` seconds) and finishes or
   undoes a save that was interrupted (:mod:`.journal`);
2. writes the journal of its temporary names, then every new file under such a name
   (``.xlmrxl-tmp.<pid>.<token>.<name>``), flushed and fsynced: shards with ``safetensors.torch.save_file`` (each
   tensor that is a view copied to a contiguous tensor at write time), ``config.json``, the index;
3. **commit point**: replaces the journal by one listing the renames into place and the deletions of the previous
   save's files; then does them, fsyncs the directory, removes the journal. A crash after the commit point is rolled
   forward by the next xlmrxl save or load; a crash before it leaves the old checkpoint, config included.

The weights record the sha256 of the ``config.json`` of their save (:mod:`.record`); a load that finds another
config warns, naming both files. New shards never take the name of a file that is present
(``model-0000i-of-0000N.1`` while the standard names are live), so the old checkpoint stays whole until the commit.
A save deletes only the files an earlier xlmrxl save recorded as its own, and the standard weights files it replaces
(:func:`.record.replaced_files`): tokenizer files, a README, sub-directories, files an index names that we did not
write, and files that merely look like ours are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import OrderedDict
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..parsing import parse_size
from . import journal, lock
from .errors import CheckpointError, SaveFailedError
from .files import (
    CONFIG_NAME,
    CONFIG_SHA_KEY,
    INDEX_FILES,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    SAVE_ID_KEY,
    SHARD_SIZES_KEY,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    pending_config,
    present_weights_files,
    read_index,
    sha256_of,
)
from .formats import write_bin, write_safetensors
from .journal import TEMP_PREFIX
from .plan import alias_names, tensor_slots
from .record import owned_files, replaced_files

logger = logging.getLogger("xlmrxl")

__all__ = ["TEMP_PREFIX", "config_text", "save_pretrained", "split_shards", "state_to_save"]


# =====================================================================================================================
# what to write
# =====================================================================================================================
def state_to_save(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Name -> tensor for every parameter and persistent buffer, with tied aliases (the same tensor under a second
    name) left out; the tie's source is kept (``_tied_weights_keys`` names the aliases)."""
    aliases = alias_names(model)
    first: dict[tuple, str] = {}
    chosen: dict[tuple, str] = OrderedDict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, _, _, _, t in tensor_slots(model):
        ident = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), t.device) if t.numel() else (id(t),)
        if ident not in first:
            first[ident] = name
            chosen[ident] = name
            out[name] = t
        elif chosen[ident] in aliases and name not in aliases:
            del out[chosen[ident]]  # keep the source, drop the alias
            chosen[ident] = name
            out[name] = t
    return OrderedDict((n, t.detach()) for n, t in out.items())


def split_shards(state: OrderedDict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order, each shard at most ``max_bytes`` (a bigger tensor gets a shard alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def config_text(model: nn.Module) -> str:
    """The ``config.json`` this save writes: ``architectures`` = the class, ``torch_dtype`` = the weights' dtype."""
    config = model.config
    config.architectures = [type(model).__name__]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None:
        with contextlib.suppress(Exception):
            config.torch_dtype = dtype
    if hasattr(config, "to_config_json"):
        return config.to_config_json()
    return config.to_json_string()  # a transformers config


# =====================================================================================================================
# the directory
# =====================================================================================================================
def _recover(directory: str) -> None:
    """With the lock held: finish or undo an interrupted save (its journal); then the config of an interrupted save
    of an older xlmrxl (weights committed, config fsynced under a temporary name) is renamed into place."""
    journal.recover(directory)
    pending = pending_config(directory, _live_record(directory))
    if pending is not None:
        os.replace(pending, os.path.join(directory, CONFIG_NAME))
        logger.info("finished the interrupted save in %s (its config.json)", directory)


def _live_record(directory: str) -> dict[str, Any]:
    """The xlmrxl commit record of the live index (empty when there is none, or it was written by another tool)."""
    present = present_weights_files(directory)
    if not present or present[0] not in INDEX_FILES:
        return {}
    try:
        return dict(read_index(os.path.join(directory, present[0]))["metadata"])
    except (CheckpointError, SafetensorError, OSError):
        return {}


def _referenced(directory: str) -> set[str]:
    """Every file a weights file present in ``directory`` uses: the weights files and the shards of each index."""
    out = set()
    for name in present_weights_files(directory):
        out.add(name)
        if name in INDEX_FILES:
            with contextlib.suppress(CheckpointError, OSError):
                out.update(read_index(os.path.join(directory, name))["weight_map"].values())
    return out


def _free_name(stem: str, i: int, n: int, ext: str, taken: set[str]) -> str:
    name = f"{stem}-{i:05d}-of-{n:05d}{ext}"
    k = 1
    while name in taken:
        name = f"{stem}-{i:05d}-of-{n:05d}.{k}{ext}"
        k += 1
    return name


def _target(save_directory: Any) -> str:
    """The real path of ``save_directory``, refused when it is empty or a file."""
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(
            f"save_directory={save_directory!r} ({type(save_directory).__name__}); pass a directory path (str or "
            "os.PathLike)"
        )
    raw = os.fspath(save_directory)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw.strip():
        raise ValueError(
            f"save_directory={raw!r} is empty; pass the directory to save into, e.g. save_pretrained('my-model') "
            "(use '.' to save into the current directory on purpose)"
        )
    target = os.path.realpath(raw)  # a symlinked directory is updated where it lives
    if os.path.lexists(target) and not os.path.isdir(target):
        raise NotADirectoryError(f"save_directory {target!r} is a file; pass a directory path")
    return target


def _write_failed(exc: BaseException, target: str, what: str, need: int) -> SaveFailedError:
    """A clear error for a write that failed (full disk above all), saying that the old checkpoint is unchanged."""
    free = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(target).free
    text = str(exc)
    code = getattr(exc, "errno", None)
    full = code in (errno.ENOSPC, errno.EDQUOT) or any(
        s in text for s in ("No space left", "StorageFull", "Disk quota", "os error 28", "os error 122")
    )
    if not full and ("inline_container" in text or "file write failed" in text):  # torch.save's zip writer
        full = free is not None and free < need + (1 << 20)  # says only "unexpected pos": judged by the free space
    kept = f"the checkpoint already in {target} is unchanged and nothing of this save was kept"
    if full:
        # the OS's words when they are clear; torch.save's zip writer only says "enforce fail ... unexpected pos"
        detail = f"; {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else ""
        space = f"{free / 1e6:.1f} MB free" if free is not None else "free space unknown"
        return SaveFailedError(
            errno.ENOSPC,
            f"saving into {target} failed while writing {what}: the file system is full ({space}; this save needs "
            f"about {need / 1e6:.1f} MB{detail}). Free some space there, or save into another directory; {kept}",
        )
    return SaveFailedError(
        code or errno.EIO,
        f"saving into {target} failed while writing {what} ({type(exc).__name__}: {text[:300]}); {kept}",
    )


# =====================================================================================================================
# save
# =====================================================================================================================
def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    max_shard_size: int | str = "50GB",
    safe_serialization: bool = True,
    timeout: float | None = None,
) -> list[str]:
    """Write ``config.json`` and the weights of ``model`` into ``save_directory`` as one transaction (see the module
    docstring). ``timeout``: seconds to wait for another save into the same directory (None: as long as it takes).
    Returns the weights files written."""
    max_bytes = parse_size(max_shard_size)
    target = _target(save_directory)
    created = not os.path.exists(target)
    os.makedirs(target, exist_ok=True)  # only when missing: an existing directory is used as it is
    try:
        state = state_to_save(model)
        shards = split_shards(state, max_bytes)
        with lock.locked(target, timeout, create=True):
            written = _save_locked(model, target, state, shards, safe_serialization)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # a directory this failed save created, still empty
                os.rmdir(target)
        raise
    logger.info(f"saved {type(model).__name__} to {target} ({', '.join(written)})")
    return written


def _save_locked(
    model: nn.Module, target: str, state: OrderedDict[str, torch.Tensor], shards: list[list[str]], safe: bool
) -> list[str]:
    _recover(target)
    token = f"{os.getpid()}.{uuid.uuid4().hex[:16]}"
    ext, stem = (".safetensors", "model") if safe else (".bin", "pytorch_model")
    sharded = len(shards) > 1
    if sharded:
        primary = SAFE_WEIGHTS_INDEX_NAME if safe else WEIGHTS_INDEX_NAME
        taken = set(os.listdir(target)) | _referenced(target)  # never rename over a file that is present
        names = []
        for i in range(1, len(shards) + 1):
            names.append(_free_name(stem, i, len(shards), ext, taken | set(names)))
    else:
        primary = SAFE_WEIGHTS_NAME if safe else WEIGHTS_NAME
        names = [primary]
    text = config_text(model).encode("utf-8")
    config_sha = hashlib.sha256(text).hexdigest()
    # in the weights file (single file) or the index (sharded), whose shards record the save's id
    record = {CONFIG_SHA_KEY: config_sha} if not sharded else {SAVE_ID_KEY: uuid.uuid4().hex}
    config_changed = sha256_of(os.path.join(target, CONFIG_NAME)) != config_sha
    finals = names + ([primary] if sharded else [])
    finals += [CONFIG_NAME] if config_changed else []
    tmp = {f: journal.temp_name(token, f) for f in finals}
    scratch = [tmp[n] + ".d" for n in names] if safe else []  # write_safetensors' scratch directories
    entry: dict[str, Any] = {"state": "writing", "token": token, "temps": sorted(tmp.values()) + scratch}
    need = sum(t.numel() * t.element_size() for t in state.values()) + len(text)
    what = "the journal"
    try:
        journal.write(target, entry)
        path = lambda name: os.path.join(target, tmp[name])  # noqa: E731
        sizes = {}
        for fname, part in zip(names, shards):
            what = fname
            tensors = {n: state[n] for n in part}
            if safe:
                write_safetensors(path(fname), tensors, {"format": "pt", **record})
            else:
                write_bin(path(fname), tensors, record)
            sizes[fname] = os.path.getsize(path(fname))
        if sharded:
            what = primary
            weight_map = {n: fname for fname, part in zip(names, shards) for n in part}
            index = {
                "metadata": {
                    "total_size": sum(t.numel() * t.element_size() for t in state.values()),
                    "total_parameters": sum(t.numel() for t in state.values()),
                    CONFIG_SHA_KEY: config_sha,
                    **record,
                    SHARD_SIZES_KEY: sizes,
                },
                "weight_map": dict(sorted(weight_map.items())),
            }
            _write_text(path(primary), json.dumps(index, indent=2) + "\n")
        if config_changed:
            what = CONFIG_NAME
            _write_text(path(CONFIG_NAME), text.decode("utf-8"))
        journal.fsync_dir(target)
        # -- the commit point: renames in this order, then the previous save's files that the new one does not use
        order = names + ([CONFIG_NAME] if config_changed else [])
        order += [primary] if sharded else []
        keep = set(finals) | {CONFIG_NAME}
        stale = (replaced_files(target, primary) | owned_files(target)) - keep
        what = "the journal"
        commit = dict(entry, state="commit", renames=[[tmp[f], f] for f in order], deletes=sorted(stale))
        journal.write(target, commit)
    except BaseException as exc:
        with contextlib.suppress(OSError, CheckpointError):
            journal.discard(target, entry)
        if isinstance(exc, (OSError, RuntimeError, SafetensorError)) and not isinstance(exc, SaveFailedError):
            raise _write_failed(exc, target, what, need) from exc
        raise
    journal.apply(target, commit)
    return names


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
