"""Files and shards of a checkpoint directory: which weights file is live, its index, shards checked against it.

Weights files, in the order of preference (the first present is *live*): ``model.safetensors``;
``model.safetensors.index.json`` with its shards; ``pytorch_model.bin``; ``pytorch_model.bin.index.json`` with its
shards. An index must be a JSON object whose ``weight_map`` maps tensor names (strings) to shard file names (plain
names inside the directory: no path separators, no ``..``, not absolute). Shards are checked against the index: each
must hold the tensors the index assigns to it; an index written by xlmrxl also records each shard's size, and a
shard holding other tensors, of another size or written by another save (the save id the index and each shard
record) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from typing import Any

from .errors import CheckpointError
from .formats import BinFile, Entry, SafetensorsFile, check_weights_file

logger = logging.getLogger("xlmrxl")

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# looked for in this order: safetensors first
WEIGHTS_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
INDEX_FILES = (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME)
# shard names as transformers writes them, and the alternates a save uses while the standard names are live
SHARD_NAME = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}(\.\d+)?\.(safetensors|bin)$")
# keys of the xlmrxl commit record (in the index "metadata")
SHARD_SIZES_KEY = "xlmrxl_shard_sizes"  # in the index: shard name -> file size
CONFIG_SHA_KEY = "xlmrxl_config_sha256"  # the sha256 of the config.json written by the same save
SAVE_ID_KEY = "xlmrxl_save_id"  # in the index and in each of its shards: which save wrote them
PENDING_CONFIG = re.compile(r"^\.xlmrxl-tmp\.\d+\.[0-9a-f]+\.config\.json$")  # a save's config, before its rename
_MAX_INDEX_BYTES = 256 << 20  # an XXL index is ~100 KB: anything this big is not an index

# tied pairs of the XLM-R masked-LM layout (alias, source): a checkpoint that stored only the alias (a conversion
# may keep either name) still feeds the source, so the base model and classifiers find their embeddings too
CHECKPOINT_TIES = (
    ("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
    ("lm_head.decoder.bias", "lm_head.bias"),
)


def present_weights_files(directory: str) -> list[str]:
    """The weights-file names of :data:`WEIGHTS_FILES` present in ``directory`` (as any kind of entry), in order."""
    return [n for n in WEIGHTS_FILES if os.path.lexists(os.path.join(directory, n))]


def is_checkpoint_dir(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a ``config.json`` and one of the weights files."""
    d = os.fspath(directory)
    return os.path.isfile(os.path.join(d, CONFIG_NAME)) and bool(present_weights_files(d))


def check_shard_name(index_path: str, shard: Any) -> str:
    """``shard`` when it is a plain file name inside the checkpoint directory, else a ``CheckpointError``."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(
            f"{index_path}: a weight_map value is {shard!r} ({type(shard).__name__}); every value must be the "
            "file name of a shard (a string)"
        )
    if os.path.isabs(shard) or "/" in shard or "\\" in shard or shard in (".", "..") or "\0" in shard:
        raise CheckpointError(
            f"{index_path} names the shard {shard!r}, which is not a plain file name inside the checkpoint "
            "directory (absolute paths, '..' and sub-directories are refused); the index is corrupted or crafted"
        )
    return shard


def read_index(index_path: str) -> dict[str, Any]:
    """The parsed index (``weight_map`` checked: names are strings, shards plain file names)."""
    check_weights_file(index_path)
    size = os.path.getsize(index_path)
    if size > _MAX_INDEX_BYTES:
        raise CheckpointError(f"{index_path} is {size} bytes, far too big for an index file; it is not an index")
    try:
        with open(index_path, "rb") as fh:
            index = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise CheckpointError(f"{index_path} is not valid JSON ({detail}); the index file is corrupted") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{index_path} has no usable 'weight_map' (an object); expected "
            '{"metadata": {...}, "weight_map": {"<tensor name>": "<shard file>"}}'
        )
    for shard in weight_map.values():
        check_shard_name(index_path, shard)
    meta = index.get("metadata")
    index["metadata"] = meta if isinstance(meta, dict) else {}
    return index


class Checkpoint:
    """The live weights files of one checkpoint directory: ``entries`` maps each stored key to its :class:`Entry`;
    ``record`` is the xlmrxl commit record of an index (config digest, shard sizes), else empty."""

    def __init__(self, directory: str, use_safetensors: bool | None = None):
        self.directory = directory
        names = WEIGHTS_FILES
        if use_safetensors is not None:
            names = tuple(n for n in WEIGHTS_FILES if (".safetensors" in n) == bool(use_safetensors))
        found = [n for n in names if os.path.lexists(os.path.join(directory, n))]
        if not found:
            present = sorted(os.listdir(directory))
            shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "") if present else "nothing"
            raise FileNotFoundError(
                f"no weights file in {directory!r}: looked for {', '.join(names)} (in that order); the "
                f"directory holds {shown}"
            )
        self.kind = found[0]
        self.files: list[SafetensorsFile | BinFile] = []
        self.entries: dict[str, Entry] = OrderedDict()
        self.record: dict[str, Any] = {}
        try:
            path = os.path.join(directory, self.kind)
            if self.kind in INDEX_FILES:
                self._open_index(path)
            else:
                self._add(path)
        except BaseException:
            self.close()
            raise
        self.aliased: set[str] = set()
        for alias, source in CHECKPOINT_TIES:
            if source not in self.entries and alias in self.entries:
                self.entries[source] = self.entries[alias]
                self.aliased.add(source)

    @property
    def weights_paths(self) -> list[str]:
        return [f.path for f in self.files]

    def _add(self, path: str, expected: set[str] | None = None) -> SafetensorsFile | BinFile:
        f = SafetensorsFile(path) if path.endswith(".safetensors") else BinFile(path)
        self.files.append(f)
        if expected is not None:
            missing = sorted(expected - set(f.entries))
            if missing:
                raise CheckpointError(
                    f"the index says {len(missing)} tensors ({', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}) are in {path}, but that shard does not "
                    "hold them; the index and the shards come from different saves"
                )
        for name, entry in f.entries.items():
            if expected is None or name in expected:
                self.entries[name] = entry
        return f

    def _open_index(self, index_path: str) -> None:
        index = read_index(index_path)
        meta = index["metadata"]
        self.record = {k: v for k, v in meta.items() if k.startswith("xlmrxl_")}
        by_shard: dict[str, set[str]] = OrderedDict()
        for name, shard in index["weight_map"].items():
            by_shard.setdefault(shard, set()).add(name)
        missing = [s for s in by_shard if not os.path.lexists(os.path.join(self.directory, s))]
        if missing:
            raise FileNotFoundError(
                f"{index_path} names shard(s) that are not in {self.directory!r}: {', '.join(missing)} "
                f"(of {len(by_shard)} shards); the download or the save was incomplete"
            )
        sizes = meta.get(SHARD_SIZES_KEY) if isinstance(meta.get(SHARD_SIZES_KEY), dict) else {}
        for shard, names in by_shard.items():
            path = os.path.join(self.directory, shard)
            f = self._add(path, names)
            if shard not in sizes:
                continue  # an index written by another tool: the key check above is all there is
            extra = sorted(set(f.entries) - names)
            save_id = meta.get(SAVE_ID_KEY)
            if save_id is not None and f.metadata.get(SAVE_ID_KEY) != save_id:
                raise CheckpointError(
                    f"{path} does not belong to the save that wrote {index_path} (save {save_id!r} wrote the index, "
                    f"{f.metadata.get(SAVE_ID_KEY)!r} the shard); the directory mixes two saves: save the model again"
                )
            if sizes[shard] != f.size or extra:
                raise CheckpointError(
                    f"{path} does not belong to the save that wrote {index_path} ({f.size} bytes vs "
                    f"{sizes[shard]!r} recorded{', extra tensors ' + ', '.join(extra[:3]) if extra else ''}); the "
                    "directory mixes two saves: save the model again"
                )

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for k, e in self.entries.items() if k not in self.aliased)

    def read_into(self, key: str, dest: Any) -> None:
        entry = self.entries[key]
        entry.file.read_into(entry, dest)

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []


def sha256_of(path: str) -> str | None:
    """The sha256 of a file's bytes, None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def pending_config(directory: str, record: dict[str, Any]) -> str | None:
    """The config an interrupted xlmrxl save had fsynced but not yet renamed into place, when the committed weights
    name it (by digest) and ``config.json`` is not it; else None."""
    want = record.get(CONFIG_SHA_KEY)
    if not want or sha256_of(os.path.join(directory, CONFIG_NAME)) == want:
        return None
    for entry in os.scandir(directory):
        if PENDING_CONFIG.match(entry.name) and entry.is_file(follow_symlinks=False) and sha256_of(entry.path) == want:
            return entry.path
    return None  # config.json edited by hand after the save: it wins


def resolve_config_file(directory: str, record: dict[str, Any]) -> str:
    """``config.json``, or the config of the save whose weights are committed (see :func:`pending_config`): the
    weights and the config always come from one save."""
    pending = pending_config(directory, record)
    if pending is None:
        return os.path.join(directory, CONFIG_NAME)
    logger.warning(
        "%s: the last save was interrupted after its weights were written; using the config it wrote (%s). "
        "Save the model again to finish it.",
        directory,
        os.path.basename(pending),
    )
    return pending
