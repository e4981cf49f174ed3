"""Durable ``save_pretrained``: new files written beside the old ones, fsynced, renamed into place, commit point last.

The target directory is never replaced, moved or re-created (it keeps its inode, owner, mode, xattrs and whatever is
mounted inside it; it is created only when missing, so a mount point or a non-writable parent is fine). A save:

1. finishes a previous save that was interrupted after its commit point (renames its fsynced config into place) and
   removes the temporary files of saves whose process is gone (``.xlmrxl-tmp.<pid>.<token>.<name>``);
2. writes every new file under a temporary name in the directory (shards with ``safetensors.torch.save_file``, each
   tensor that is a view copied to a contiguous tensor at write time), flushes and fsyncs it;
3. renames the shards to names the live checkpoint does not use (the standard ``model-0000i-of-0000N`` names, or
   ``model-0000i-of-0000N.1`` while those are live), fsyncs the directory;
4. **commit point**: renames the index (or the single weights file) into place; when a weights file of another
   layout that the loader prefers is present, the commit is the removal of that file, after the new one is in place;
5. renames the new ``config.json`` into place and removes the shards and weights files of the previous save, then
   fsyncs the directory. A sharded save's index records the sha256 of its config, so a load between 4 and 5 uses the
   fsynced config of the same save (and the next save finishes the rename). A single weights file keeps the
   safetensors metadata ``{"format": "pt"}`` alone (more keys would come out in random order: two saves of the same
   weights would differ), so there the config is renamed just before the commit point, and a crash between those
   two renames leaves the new config beside the old weights; when the config is unchanged (the usual re-save) it is
   not rewritten at all.

A crash at any point leaves a directory that loads the old checkpoint or the new one: the shards of an xlmrxl index are
checked against the tensors and sizes it records. Files that are not part of a checkpoint (tokenizer files, a README,
sub-directories) are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections import OrderedDict
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..parsing import parse_size
from .errors import CheckpointError
from .files import (
    CONFIG_NAME,
    CONFIG_SHA_KEY,
    INDEX_FILES,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    SHARD_NAME,
    SHARD_SIZES_KEY,
    WEIGHTS_FILES,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    pending_config,
    present_weights_files,
    read_index,
    sha256_of,
)
from .formats import write_bin, write_safetensors
from .plan import alias_names, tensor_slots

logger = logging.getLogger("xlmrxl")

TEMP_PREFIX = ".xlmrxl-tmp."
_TEMP = re.compile(r"^\.xlmrxl-tmp\.(\d+)\.([0-9a-f]+)\.(.+)$")


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
def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the renames are still atomic
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_record(directory: str) -> dict[str, Any]:
    """The xlmrxl commit record of the live weights file (empty when unreadable or written by another tool)."""
    present = present_weights_files(directory)
    if not present:
        return {}
    path = os.path.join(directory, present[0])
    try:
        if present[0] in INDEX_FILES:
            return dict(read_index(path)["metadata"])
    except (CheckpointError, SafetensorError, OSError):
        pass
    return {}


def _recover(directory: str) -> None:
    """Finish an interrupted save whose weights were committed, then remove temporary files of dead saves."""
    pending = pending_config(directory, _live_record(directory))
    if pending is not None:
        os.replace(pending, os.path.join(directory, CONFIG_NAME))
        logger.info("finished the interrupted save in %s (its config.json)", directory)
    for entry in os.scandir(directory):
        m = _TEMP.match(entry.name)
        if m is None or entry.is_symlink() or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):  # cleaning up is best effort: it never fails a save
            if entry.is_dir(follow_symlinks=False):  # a safetensors scratch directory (formats.write_safetensors):
                for inner in os.scandir(entry.path):  # only the files safetensors writes there, never deeper
                    if inner.is_file(follow_symlinks=False):
                        os.unlink(inner.path)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
            logger.info("removed %s, left by an interrupted save", entry.path)


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


def _unlink(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        return  # never a directory
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# =====================================================================================================================
# save
# =====================================================================================================================
def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    max_shard_size: int | str = "50GB",
    safe_serialization: bool = True,
) -> list[str]:
    """Write ``config.json`` and the weights of ``model`` into ``save_directory`` durably (see the module docstring).
    Returns the weights files written."""
    max_bytes = parse_size(max_shard_size)
    target = os.path.realpath(os.fspath(save_directory))  # a symlinked directory is updated where it lives
    if os.path.lexists(target) and not os.path.isdir(target):
        raise NotADirectoryError(f"save_directory {target!r} is a file; pass a directory path")
    created = not os.path.exists(target)
    os.makedirs(target, exist_ok=True)  # only when missing: an existing directory is used as it is
    state = state_to_save(model)
    shards = split_shards(state, max_bytes)
    _recover(target)
    token = f"{os.getpid()}.{uuid.uuid4().hex[:16]}"
    temps: list[str] = []

    def temp(name: str) -> str:
        path = os.path.join(target, f"{TEMP_PREFIX}{token}.{name}")
        temps.append(path)
        return path

    ext, stem = (".safetensors", "model") if safe_serialization else (".bin", "pytorch_model")
    sharded = len(shards) > 1
    if sharded:
        primary = SAFE_WEIGHTS_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME
    else:
        primary = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    old_files = _referenced(target)
    present = present_weights_files(target)
    committed = False
    config_tmp = None
    try:
        # -- 2. every new file under a temporary name, fsynced ------------------------------------------------------
        text = config_text(model).encode("utf-8")
        config_path = os.path.join(target, CONFIG_NAME)
        record: dict[str, Any] = {CONFIG_SHA_KEY: hashlib.sha256(text).hexdigest()}
        if sha256_of(config_path) != record[CONFIG_SHA_KEY]:
            config_tmp = temp(CONFIG_NAME)
            with open(config_tmp, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        placed: list[tuple[str, str]] = []  # (temporary path, final name)
        written: list[str] = []
        if sharded:
            weight_map, sizes = {}, {}
            for i, names in enumerate(shards, 1):
                fname = _free_name(stem, i, len(shards), ext, old_files | set(written))
                path = temp(fname)
                part = {n: state[n] for n in names}
                if safe_serialization:
                    write_safetensors(path, part, {"format": "pt"})
                else:
                    write_bin(path, part)
                sizes[fname] = os.path.getsize(path)
                placed.append((path, fname))
                written.append(fname)
                weight_map.update({n: fname for n in names})
            index = {
                "metadata": {
                    "total_size": sum(t.numel() * t.element_size() for t in state.values()),
                    "total_parameters": sum(t.numel() for t in state.values()),
                    **record,
                    SHARD_SIZES_KEY: sizes,
                },
                "weight_map": dict(sorted(weight_map.items())),
            }
            primary_tmp = temp(primary)
            with open(primary_tmp, "w", encoding="utf-8") as fh:
                json.dump(index, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
        else:
            primary_tmp = temp(primary)
            if safe_serialization:
                write_safetensors(primary_tmp, dict(state), {"format": "pt"})
            else:
                write_bin(primary_tmp, dict(state))
            written.append(primary)
        _fsync_dir(target)
        # -- 3. shards into names the live checkpoint does not use ------------------------------------------------
        for path, fname in placed:
            os.replace(path, os.path.join(target, fname))
        _fsync_dir(target)
        # -- 4. the commit point ------------------------------------------------------------------------------------
        rank = WEIGHTS_FILES.index
        shadowing = sorted((f for f in present if rank(f) < rank(primary)), key=rank, reverse=True)
        os.replace(primary_tmp, os.path.join(target, primary))
        for f in shadowing[:-1]:  # weights files the loader prefers, the live one last: its removal is the commit
            _unlink(os.path.join(target, f))
        record_kept = sharded  # the committed index holds the config's digest
        if config_tmp is not None and not record_kept:
            os.replace(config_tmp, config_path)
        if shadowing:
            _unlink(os.path.join(target, shadowing[-1]))
        committed = True
        _fsync_dir(target)
        # -- 5. config, then the previous save's files ----------------------------------------------------------------
        if config_tmp is not None and record_kept:
            os.replace(config_tmp, config_path)
            _fsync_dir(target)
        keep = set(written) | {primary, CONFIG_NAME}
        # only weights files: an index (ours or crafted) naming README.md must not get it deleted
        stale = {f for f in old_files | set(present) if f not in keep and f.endswith((".safetensors", ".bin", ".json"))}
        stale -= {f for f in stale if f.endswith(".json") and f not in WEIGHTS_FILES}
        stale |= {e.name for e in os.scandir(target) if SHARD_NAME.match(e.name) and e.name not in keep}
        stale |= {f for f in WEIGHTS_FILES if f != primary and os.path.lexists(os.path.join(target, f))}
        for f in sorted(stale):
            _unlink(os.path.join(target, f))
        _fsync_dir(target)
    finally:
        if committed and config_tmp is not None and os.path.exists(config_tmp):
            with contextlib.suppress(OSError):  # the weights are committed: their config must follow
                os.replace(config_tmp, os.path.join(target, CONFIG_NAME))
        for path in temps:
            _unlink(path)
        if created and not committed:
            with contextlib.suppress(OSError):  # a directory this failed save created, still empty
                os.rmdir(target)
    logger.info(f"saved {type(model).__name__} to {target} ({', '.join(written)})")
    return written
