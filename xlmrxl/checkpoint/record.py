"""What an xlmrxl save records beside its weights: the digest of its ``config.json``, and the files it owns.

The sha256 of the ``config.json`` written by a save is recorded with its weights: in the safetensors metadata of a
single ``model.safetensors``, in the ``metadata`` of an index, and in an extra record of the zip archive of a single
``pytorch_model.bin`` (``torch.load`` and transformers read only their own records). A load whose ``config.json``
does not match gets a warning naming both files (:func:`config_mismatch`); it is used, as transformers does.

A save deletes only files that an earlier xlmrxl save recorded as its own (:func:`owned_files`): the shards listed,
with their sizes, in the xlmrxl record of an index; never another file an index names. Of the standard weights files
it replaces those of xlmrxl saves, and those the loader would prefer to the new one (:func:`replaced_files`).
"""

from __future__ import annotations

import os

from safetensors import SafetensorError, safe_open

from .files import (
    CONFIG_SHA_KEY,
    INDEX_FILES,
    SAFE_WEIGHTS_NAME,
    SHARD_NAME,
    SHARD_SIZES_KEY,
    WEIGHTS_FILES,
    Checkpoint,
    present_weights_files,
    read_index,
    sha256_of,
)
from .formats import bin_metadata


def recorded_config_sha(directory: str, ckpt: Checkpoint) -> tuple[str | None, str]:
    """(the config digest recorded with the live weights or None, the file that records it)."""
    if ckpt.kind in INDEX_FILES:
        return ckpt.record.get(CONFIG_SHA_KEY), os.path.join(directory, ckpt.kind)
    meta = getattr(ckpt.files[0], "metadata", {}) if ckpt.files else {}
    return meta.get(CONFIG_SHA_KEY), os.path.join(directory, ckpt.kind)


def config_mismatch(directory: str, ckpt: Checkpoint, config_path: str, got: str | None = None) -> str | None:
    """None when ``config_path`` (whose sha256 is ``got`` when given) is the config saved with the live weights (or
    nothing was recorded); else the warning naming both files and what to do."""
    want, where = recorded_config_sha(directory, ckpt)
    if not isinstance(want, str) or not want:
        return None
    if got is None:
        got = sha256_of(config_path)
    if got == want:
        return None
    return (
        f"{config_path} is not the config saved with the weights: {where} records the sha256 of its config.json "
        f"({want[:16]}...), {os.path.basename(config_path)} has {str(got)[:16]}.... It was edited or copied from "
        "elsewhere after the save, so the directory may mix two checkpoints; it is used as it is (as transformers "
        "does). If the edit is on purpose, save the model again (that records the new config); if not, restore the "
        "config.json saved with these weights"
    )


def owned_files(directory: str) -> set[str]:
    """Files of ``directory`` that an earlier xlmrxl save recorded as its own: the shards in the xlmrxl record of a
    present index (standard shard names, still of the recorded size)."""
    out = set()
    for index_name in INDEX_FILES:
        path = os.path.join(directory, index_name)
        if not os.path.isfile(path):
            continue
        try:
            index = read_index(path)
        except (OSError, ValueError):
            continue
        sizes = index["metadata"].get(SHARD_SIZES_KEY)
        named = set(index["weight_map"].values())
        for shard, size in (sizes if isinstance(sizes, dict) else {}).items():
            shard_path = os.path.join(directory, shard)
            if (
                shard in named
                and SHARD_NAME.match(shard)
                and os.path.isfile(shard_path)
                and not os.path.islink(shard_path)
                and os.path.getsize(shard_path) == size
            ):
                out.add(shard)
    return out


def _ours(directory: str, name: str) -> bool:
    """True when the weights file ``name`` was written by an xlmrxl save (it carries our record)."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    try:
        if name in INDEX_FILES:
            return SHARD_SIZES_KEY in read_index(path)["metadata"]
        if name == SAFE_WEIGHTS_NAME:
            with safe_open(path, framework="pt") as fh:
                return CONFIG_SHA_KEY in (fh.metadata() or {})
        return CONFIG_SHA_KEY in bin_metadata(path)
    except (OSError, ValueError, SafetensorError):
        return False


def replaced_files(directory: str, primary: str) -> set[str]:
    """The weights files (of :data:`WEIGHTS_FILES`) that a save whose live file is ``primary`` removes: those the
    loader would prefer to it (else the save would not be the checkpoint), and those an xlmrxl save wrote. A weights
    file of another tool that the loader looks at after ours stays."""
    rank = WEIGHTS_FILES.index
    return {
        n for n in present_weights_files(directory) if n != primary and (rank(n) < rank(primary) or _ours(directory, n))
    }
