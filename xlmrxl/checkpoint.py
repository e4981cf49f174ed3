"""Checkpoint IO: ``from_pretrained`` / ``save_pretrained`` for the xlmrxl model classes, without transformers.

The model classes delegate here::

    load_pretrained(cls, pretrained_model_name_or_path, *, dtype=None, device=None, backend="auto",
                    quantization=None, output_loading_info=False, progress=None, **config_overrides)
    save_pretrained(model, save_directory, *, max_shard_size="50GB", safe_serialization=True)

Loading (a local directory; a Hugging Face repo id only when ``huggingface_hub`` is installed and can fetch it):

- Weights files, in this order of preference: ``model.safetensors``; ``model.safetensors.index.json`` with its shards
  ``model-0000i-of-0000N.safetensors``; ``pytorch_model.bin``; ``pytorch_model.bin.index.json`` with its shards.
  ``.bin`` files are read with ``torch.load(weights_only=True)``: a file that holds anything but tensors is refused
  (:class:`UnsafeCheckpointError`) and nothing in it is executed.
- The model is built on the meta device and every parameter / persistent buffer is materialised straight from the file
  in its final dtype and on its final device, one module at a time. Safetensors bytes are read with plain reads into
  the destination buffer (through a small staging buffer when the dtype or the device differs), so the peak memory
  is the final weights plus a few MB; ``.bin`` files are memory-mapped and each tensor's pages are released once it
  has been copied. ``dtype=None`` gives float32 (transformers 4.56's default), ``"auto"`` the config's
  ``torch_dtype`` (else the checkpoint's first floating dtype); floating entries are cast, integer ones keep the
  dtype the module declares. ``device=None`` gives cpu.
- Key fixes, as transformers does them: the old persistent ``embeddings.position_ids`` / ``token_type_ids`` buffers
  are dropped silently; tensors the model ties (``lm_head.decoder.weight`` / ``.bias``) may be present or absent, and
  any present member of a tied group feeds the whole group (so ``lm_head.bias`` is taken from ``lm_head.decoder.bias``
  when only that is stored, and a checkpoint holding only ``lm_head.decoder.weight`` still gives every class its word
  embeddings); a task checkpoint loads into the base model (the ``roberta.`` prefix is stripped, head
  keys become *unexpected*) and a base checkpoint into a task model (the prefix is added). Missing tensors are
  initialised with ``model._init_weights(module)`` and listed in a warning; unexpected keys are listed as a warning
  when the checkpoint was saved from this very class, else at info level (an MLM checkpoint feeding a classifier
  is expected to leave ``lm_head.*`` unused). A shape mismatch is an error naming the key and both shapes, unless
  ``ignore_mismatched_sizes=True`` (then the tensor is initialised and reported under ``mismatched_keys``).
- ``output_loading_info=True`` returns ``(model, {"missing_keys", "unexpected_keys", "mismatched_keys",
  "error_msgs"})``. Keyword arguments that are parameters of ``cls.__init__`` (``add_pooling_layer``) go to the
  constructor; transformers' loader keywords are used (``torch_dtype`` for ``dtype``, ``config=`` instead of
  ``config.json``, ``device_map`` naming one device, ``subfolder``, ``use_safetensors``, ``ignore_mismatched_sizes``)
  or ignored (``low_cpu_mem_usage``, Hub options); everything else is a config override (``num_labels=3``), set on
  the config after the file's values as transformers does.
- ``quantization=``: ``None`` loads as stored; anything else asks ``xlmrxl.quantization.load_hook`` for a per-module
  hook that runs right after each module's tensors have arrived (see :func:`_quantization_hook`).

Saving: ``config.json`` (``architectures`` = the class name, ``torch_dtype``) and ``model.safetensors`` (metadata
``{"format": "pt"}``) with tied aliases omitted; several ``model-0000i-of-0000N.safetensors`` plus
``model.safetensors.index.json`` when the weights exceed ``max_shard_size`` (bytes, or a string such as ``"5GB"``,
``"100KB"``, ``"2GiB"``); ``safe_serialization=False`` writes ``pytorch_model.bin`` (sharded the same way). Tensors
that share storage (fused QKV views) are written as independent entries. The save is atomic: everything is staged in
a temporary directory beside ``save_directory``; other files already there (tokenizer files ...) are carried over,
weights files of an older save are dropped, and the staged directory then replaces the old one in one rename
(``renameat2(RENAME_EXCHANGE)`` on Linux). An exception while saving leaves ``save_directory`` untouched and no
temporary directory behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import logging
import mmap
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
from torch import nn

logger = logging.getLogger("xlmrxl")

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# looked for in this order: safetensors first
WEIGHTS_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
# files a save owns in its directory (removed when a newer save replaces them); everything else is kept
_OWNED_FILE = re.compile(
    r"^(config\.json|model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors|"
    r"pytorch_model\.bin|pytorch_model\.bin\.index\.json|pytorch_model-\d{5}-of-\d{5}\.bin)$"
)
# tied pairs of the XLM-R masked-LM layout (alias, source): a checkpoint that stored only the alias (a conversion
# may keep either name) still feeds the source, so the base model and classifiers find their embeddings too
_CHECKPOINT_TIES = (
    ("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
    ("lm_head.decoder.bias", "lm_head.bias"),
)
# old persistent buffers of the embeddings, no longer part of the model: dropped without a word
_LEGACY_BUFFERS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")

_PROGRESS_MIN_BYTES = 1 << 30  # progress bar on (when stderr is a tty) above 1 GB of weights
_STAGING_BYTES = 16 << 20  # staging buffer for reads that convert dtype or change device
# transformers' from_pretrained keywords: used (config, torch_dtype, ignore_mismatched_sizes, device_map,
# use_safetensors, subfolder, Hub options) or accepted and ignored (the rest); never written into the config
_LOADER_OPTIONS = (
    "config",
    "torch_dtype",
    "ignore_mismatched_sizes",
    "device_map",
    "use_safetensors",
    "subfolder",
    "local_files_only",
    "revision",
    "cache_dir",
    "token",
    "low_cpu_mem_usage",
    "trust_remote_code",
    "force_download",
    "resume_download",
    "proxies",
    "use_auth_token",
    "offload_folder",
    "offload_state_dict",
    "variant",
    "_fast_init",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: corrupted or truncated file, bad index, shape mismatch."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.bin`` file holding pickled objects other than tensors; it was refused, not executed."""


# =====================================================================================================================
# dtypes
# =====================================================================================================================
_ST_TO_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        _ST_TO_TORCH[_name] = getattr(torch, _attr)
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling config.json uses)."""
    return str(dtype).replace("torch.", "")


def _parse_dtype(value, what: str = "dtype") -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("torch.", "")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
    raise ValueError(
        f"{what}={value!r} is not a dtype I know; pass a torch dtype or one of "
        f"{', '.join(sorted(set(_DTYPE_NAMES)))}, or 'auto' for the dtype stored in config.json"
    )


def parse_size(size: int | str) -> int:
    """``max_shard_size``: an int (bytes) or a string such as ``"5GB"`` (10^9), ``"2GiB"`` (2^30), ``"100KB"``."""
    if isinstance(size, bool):
        raise ValueError(f"max_shard_size={size!r} is not a size; pass bytes (int) or a string like '5GB'")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size={size} must be a positive number of bytes")
        return size
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?\s*", str(size).lower())
    if m is None:
        raise ValueError(
            f"max_shard_size={size!r} is not a size; use bytes (int) or a string like '5GB', '500MB', '100KB' or '2GiB'"
        )
    unit = m.group(2) or "b"
    scale = 1 if unit == "b" else (1024 if "i" in unit else 1000) ** ("kmgt".index(unit[0]) + 1)
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r} must be a positive size")
    return value


# =====================================================================================================================
# reading weights files
# =====================================================================================================================
def _readinto_exact(f, buf: memoryview, path: str, offset: int) -> None:
    """Fill ``buf`` from the current position of ``f`` (raw reads may come back short)."""
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise CheckpointError(
                f"{path} is truncated or corrupted: a read of {len(view)} bytes at offset {offset} got only {got}; "
                "re-download or re-save the checkpoint"
            )
        got += n


def _byte_view(t: torch.Tensor):
    """A writable numpy uint8 view of a contiguous CPU tensor's bytes (works for bf16, bool, ...)."""
    return t.reshape(-1).view(torch.uint8).numpy()


class _Entry:
    __slots__ = ("name", "dtype", "shape", "nbytes", "source")

    def __init__(self, name, dtype, shape, nbytes, source):
        self.name, self.dtype, self.shape, self.nbytes, self.source = name, dtype, tuple(shape), nbytes, source


class _SafetensorsFile:
    """One ``.safetensors`` file: header parsed and checked at open, tensors read on demand with plain reads."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        self.f = open(path, "rb", buffering=0)
        try:
            self.entries, self.metadata = self._parse_header(size)
        except BaseException:
            self.f.close()
            raise

    def _parse_header(self, size: int):
        path = self.path
        if size < 8:
            raise CheckpointError(
                f"{path} is truncated or corrupted: expected at least 8 bytes (the header length), "
                f"found {size}; re-download or re-save the checkpoint"
            )
        n = int.from_bytes(self.f.read(8), "little")
        if 8 + n > size:
            raise CheckpointError(
                f"{path} is truncated or corrupted: its header claims {n} bytes, so the file should have at least "
                f"{8 + n} bytes, but it has {size}; re-download or re-save the checkpoint"
            )
        raw = self.f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"{path}: the safetensors header ({n} bytes) is not valid JSON ({exc}); "
                "the file is corrupted or not a safetensors file"
            ) from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the safetensors header is JSON but not an object; the file is corrupted")
        metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        entries: dict[str, _Entry] = {}
        end_max = 0
        for name, info in header.items():
            try:
                dt = info["dtype"]
                shape = [int(s) for s in info["shape"]]
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(
                    f"{path}: header entry {name!r} lacks a valid dtype / shape / data_offsets "
                    f"({info!r}); the file is corrupted"
                ) from None
            if dt not in _ST_TO_TORCH:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has dtype {dt!r}, which this torch cannot hold "
                    f"(known: {', '.join(sorted(_ST_TO_TORCH))})"
                )
            dtype = _ST_TO_TORCH[dt]
            numel = 1
            for s in shape:
                numel *= s
            nbytes = numel * _itemsize(dtype)
            if end - begin != nbytes or begin < 0:
                raise CheckpointError(
                    f"{path}: tensor {name!r} of shape {tuple(shape)} and dtype {dt} needs {nbytes} "
                    f"bytes but its data_offsets {[begin, end]} span {end - begin}; the file is "
                    "corrupted"
                )
            end_max = max(end_max, end)
            entries[name] = _Entry(name, dtype, shape, nbytes, (self, begin))
        expected = self.data_start + end_max
        if size < expected:
            raise CheckpointError(
                f"{path} is truncated or corrupted: its header describes {expected} bytes but the file has only "
                f"{size} bytes; re-download or re-save the checkpoint"
            )
        return entries, metadata

    def read_into(self, entry: _Entry, dest: torch.Tensor) -> None:
        _, begin = entry.source
        offset = self.data_start + begin
        self.f.seek(offset)
        if dest.device.type == "cpu" and dest.dtype == entry.dtype and dest.is_contiguous():
            if entry.nbytes:
                _readinto_exact(self.f, _byte_view(dest), self.path, offset)
            return
        # convert / move through a small staging buffer, whole elements per chunk
        item = _itemsize(entry.dtype)
        chunk = max(item, (_STAGING_BYTES // item) * item)
        staging = _staging(min(chunk, max(entry.nbytes, item)))
        flat = dest.view(-1)
        done = 0
        while done < entry.nbytes:
            n = min(chunk, entry.nbytes - done)
            _readinto_exact(self.f, _byte_view(staging[:n]), self.path, offset + done)
            src = staging[:n].view(entry.dtype)
            flat[done // item : (done + n) // item].copy_(src)
            done += n

    def close(self):
        self.f.close()


_STAGING: dict[str, torch.Tensor] = {}


def _staging(nbytes: int) -> torch.Tensor:
    buf = _STAGING.get("cpu")
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        _STAGING["cpu"] = buf
    return buf[:nbytes]


def _release_pages(t: torch.Tensor, start_byte: int, nbytes: int) -> None:
    """Drop the (clean, privately mapped, file-backed) pages behind ``t``'s bytes from this process's resident set
    once they have been copied: they would otherwise all stay resident and count against peak memory. The data is
    not lost: a later touch reads the file again."""
    libc = _libc()
    if libc is None or nbytes <= 0:
        return
    page = mmap.PAGESIZE
    addr = t.data_ptr() + start_byte
    lo = (addr + page - 1) // page * page  # only whole pages inside the range
    hi = (addr + nbytes) // page * page
    if hi > lo:
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # 4 = MADV_DONTNEED


_LIBC: list = []


def _libc():
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(None, use_errno=True)
                lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            except (OSError, AttributeError):
                lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def _little_endian_zip(path: str) -> bool:
    """Memory-map only files whose bytes torch uses as they are (little-endian data on a little-endian machine):
    a byte-swapped tensor would live in private dirty pages, which releasing them would lose."""
    import zipfile

    if sys.byteorder != "little":
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            rec = next((n for n in zf.namelist() if n.endswith("/byteorder") or n == "byteorder"), None)
            return rec is None or zf.read(rec).strip() == b"little"
    except (OSError, zipfile.BadZipFile):
        return False


class _BinFile:
    """One ``pytorch_model*.bin`` file, loaded with ``weights_only=True`` and memory-mapped when it is a zip file."""

    def __init__(self, path: str):
        self.path = path
        self.mapped = False
        try:
            import zipfile

            zipped = zipfile.is_zipfile(path)
        except OSError:
            zipped = False
        try:
            if zipped and _little_endian_zip(path):
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                self.mapped = True
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()
            detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
            raise UnsafeCheckpointError(
                f"{path} holds non-tensor (arbitrary pickled) objects and was refused for safety: it was not "
                f"executed ({detail.strip()}). If you trust its source, convert it once to safetensors with "
                "transformers (from_pretrained, then save_pretrained) and load that instead."
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} could not be read as a PyTorch checkpoint: it is truncated or corrupted "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "re-download or re-save it"
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors (a state dict)")
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{path} is not a plain state dict: entries {bad[:5]} are not name -> tensor")
        self.tensors = state
        self.entries = {
            k: _Entry(k, v.dtype, v.shape, v.numel() * v.element_size(), (self, k)) for k, v in state.items()
        }
        self.metadata = {}

    def read_into(self, entry: _Entry, dest: torch.Tensor) -> None:
        src = self.tensors[entry.name]
        if not (self.mapped and src.is_contiguous()):
            dest.copy_(src)
            return
        # chunk by chunk, giving each chunk's mapped pages back once copied
        item = src.element_size()
        chunk = max(1, _STAGING_BYTES // item)
        s, d = src.reshape(-1), dest.view(-1)
        for i in range(0, s.numel(), chunk):
            j = min(i + chunk, s.numel())
            d[i:j].copy_(s[i:j])
            _release_pages(src, i * item, (j - i) * item)

    def close(self):
        self.tensors = {}


class _Checkpoint:
    """All weights files of one checkpoint directory: ``entries`` maps each stored key to where it lives."""

    def __init__(self, directory: str, use_safetensors: bool | None = None):
        self.directory = directory
        names = WEIGHTS_FILES
        if use_safetensors is not None:
            names = tuple(n for n in WEIGHTS_FILES if (".safetensors" in n) == bool(use_safetensors))
        found = [name for name in names if os.path.isfile(os.path.join(directory, name))]
        if not found:
            present = sorted(os.listdir(directory))
            shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "") if present else "nothing"
            raise FileNotFoundError(
                f"no weights file in {directory!r}: looked for {', '.join(names)} (in that order); the "
                f"directory holds {shown}"
            )
        self.kind = found[0]
        self.files: list = []
        self.entries: dict[str, _Entry] = OrderedDict()
        try:
            if self.kind in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
                self._add(os.path.join(directory, self.kind))
            else:
                self._open_index(os.path.join(directory, self.kind))
        except BaseException:
            self.close()
            raise
        self.aliased = set()
        for alias, source in _CHECKPOINT_TIES:
            if source not in self.entries and alias in self.entries:
                self.entries[source] = self.entries[alias]
                self.aliased.add(source)

    def _add(self, path: str, expected: Iterable[str] | None = None):
        f = _SafetensorsFile(path) if path.endswith(".safetensors") else _BinFile(path)
        self.files.append(f)
        if expected is not None:
            missing = sorted(set(expected) - set(f.entries))
            if missing:
                raise CheckpointError(
                    f"the index says {len(missing)} tensors ({', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}) are in {path}, but that shard does not "
                    "hold them; the index and the shards come from different saves"
                )
        for name, entry in f.entries.items():
            if expected is None or name in expected:
                self.entries[name] = entry

    def _open_index(self, index_path: str):
        try:
            with open(index_path, encoding="utf-8") as fh:
                index = json.load(fh)
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{index_path} is not valid JSON ({exc}); the index file is corrupted") from None
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{index_path} has no usable 'weight_map' ({exc}); expected "
                '{"metadata": {...}, "weight_map": {"<tensor name>": "<shard file>"}}'
            ) from None
        by_shard: dict[str, list] = OrderedDict()
        for name, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        missing = [s for s in by_shard if not os.path.isfile(os.path.join(self.directory, s))]
        if missing:
            raise FileNotFoundError(
                f"{index_path} names shard(s) that are not in {self.directory!r}: {', '.join(missing)} "
                f"(of {len(by_shard)} shards); the download or the save was incomplete"
            )
        for shard, names in by_shard.items():
            self._add(os.path.join(self.directory, shard), set(names))

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for k, e in self.entries.items() if k not in self.aliased)

    def read_into(self, key: str, dest: torch.Tensor) -> None:
        entry = self.entries[key]
        entry.source[0].read_into(entry, dest)

    def close(self):
        for f in self.files:
            f.close()
        self.files = []


# =====================================================================================================================
# loading
# =====================================================================================================================
def _resolve_directory(name_or_path, options: dict) -> str:
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        raise NotADirectoryError(
            f"{path!r} is a file; pass the directory that holds config.json and the weights "
            f"({', '.join(WEIGHTS_FILES)})"
        )
    hub_error = None
    if re.fullmatch(r"[\w\-]+(\.[\w\-]+)*/[\w\-.]+", path):  # looks like a Hub repo id: owner/name
        try:
            return _hub_download(path, options)
        except ImportError:
            hub_error = "huggingface_hub is not installed, so repo ids cannot be downloaded"
        except Exception as exc:  # network, auth, missing repo: reported with the local-path error below
            detail = str(exc).splitlines()[0] if str(exc) else ""
            hub_error = f"fetching it from the Hugging Face Hub failed ({type(exc).__name__}: {detail[:200]})"
    msg = f"checkpoint directory {path!r} does not exist"
    if hub_error:
        msg += f"; as a Hub repo id: {hub_error}"
    raise FileNotFoundError(msg + f". Pass a local directory holding config.json and one of {', '.join(WEIGHTS_FILES)}")


def _hub_download(repo_id: str, options: dict) -> str:
    """Optional convenience: a Hub repo id via ``huggingface_hub`` (config, tokenizer files and one weights layout,
    safetensors first). Offline or with ``local_files_only=True`` only the local cache is used."""
    from huggingface_hub import HfApi, snapshot_download

    kw = {k: options[k] for k in ("revision", "cache_dir", "token") if options.get(k) is not None}
    offline = options.get("local_files_only") or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    if offline:
        return snapshot_download(repo_id, local_files_only=True, **kw)
    files = set(HfApi().list_repo_files(repo_id, revision=kw.get("revision"), token=kw.get("token")))
    weights = next((w for w in WEIGHTS_FILES if w in files), None)
    patterns = ["*.json", "*.model", "*.txt"]
    if weights in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        patterns.append(weights)
    elif weights == SAFE_WEIGHTS_INDEX_NAME:
        patterns.append("model-*.safetensors")
    elif weights == WEIGHTS_INDEX_NAME:
        patterns.append("pytorch_model-*.bin")
    return snapshot_download(repo_id, allow_patterns=patterns, **kw)


def _resolve_device(device, device_map) -> torch.device:
    if device is None and device_map is not None:
        if isinstance(device_map, dict):
            placed = set(device_map.values())
            if len(placed) != 1:
                raise ValueError(
                    f"device_map={device_map!r} spreads the model over several devices, which xlmrxl does "
                    "not do; pass device='cuda' (or one device) instead"
                )
            device_map = placed.pop()
        if device_map == "auto":
            device_map = "cuda" if torch.cuda.is_available() else "cpu"
        device = device_map
    if isinstance(device, int):
        device = f"cuda:{device}"
    try:
        return torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device ({exc}); pass 'cpu', 'cuda', 'cuda:1' or a torch.device"
        ) from None


def _resolve_dtype(dtype, config, ckpt: _Checkpoint) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        for attr in ("torch_dtype", "dtype"):
            value = getattr(config, attr, None)
            if value is not None:
                return _parse_dtype(value, f"config.{attr}")
        for e in ckpt.entries.values():
            if e.dtype.is_floating_point:
                return e.dtype
        return torch.float32
    return _parse_dtype(dtype)


def _tensor_slots(model: nn.Module):
    """Every checkpoint-visible tensor slot, aliases included: (full name, module, attr, is_param, tensor)."""
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, p in module._parameters.items():
            if p is not None:
                yield prefix + attr, module, attr, True, p
        for attr, b in module._buffers.items():
            if b is not None and attr not in module._non_persistent_buffers_set:
                yield prefix + attr, module, attr, False, b


def _alias_names(model: nn.Module) -> set:
    tied = getattr(model, "_tied_weights_keys", None) or ()
    return set(tied.keys()) if isinstance(tied, dict) else set(tied)


def _rename_checkpoint_keys(model: nn.Module, ckpt_keys: list[str], expected: set) -> dict[str, str]:
    """Checkpoint key -> model key (or itself when unmatched): legacy buffers dropped, base-model prefix moved."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_prefix = bool(prefix) and any(k.startswith(prefix + ".") for k in ckpt_keys)
    expects_prefix = bool(prefix) and hasattr(model, prefix) and isinstance(getattr(model, prefix), nn.Module)
    mapping = {}
    for key in ckpt_keys:
        new = key
        if has_prefix and not expects_prefix and key.startswith(prefix + "."):
            new = key[len(prefix) + 1 :]  # task checkpoint into the base model
        elif expects_prefix and not has_prefix:
            new = f"{prefix}.{key}"  # base checkpoint into a task model
        if new not in expected:
            for old, repl in ((".gamma", ".weight"), (".beta", ".bias")):  # pre-2020 LayerNorm names
                if new.endswith(old) and new[: -len(old)] + repl in expected:
                    new = new[: -len(old)] + repl
        if new not in expected and _LEGACY_BUFFERS.search(new):
            continue
        mapping[key] = new
    return mapping


class _Plan:
    """Which checkpoint key feeds each unique model tensor, and what is missing / unexpected / mismatched."""

    def __init__(self, model, ckpt: _Checkpoint, ignore_mismatched_sizes: bool):
        slots = list(_tensor_slots(model))
        self.groups: dict[int, list] = OrderedDict()  # id(tensor) -> [(name, module, attr, is_param)]
        self.meta: dict[int, torch.Tensor] = {}
        for name, module, attr, is_param, t in slots:
            self.groups.setdefault(id(t), []).append((name, module, attr, is_param))
            self.meta[id(t)] = t
        expected = {s[0] for s in slots}
        mapping = _rename_checkpoint_keys(model, list(ckpt.entries), expected)
        by_model_key = {}
        for ck, mk in mapping.items():
            by_model_key.setdefault(mk, ck)
        aliases = _alias_names(model)
        self.source: dict[int, str | None] = {}
        missing, mismatched = [], []
        for tid, members in self.groups.items():
            names = [m[0] for m in members]
            present = [n for n in names if n in by_model_key]
            present.sort(key=lambda n: n in aliases)  # prefer the tie's source over its alias
            if not present:
                self.source[tid] = None
                missing.extend(names)
                continue
            ck = by_model_key[present[0]]
            want = tuple(self.meta[tid].shape)
            have = ckpt.entries[ck].shape
            if have != want:
                mismatched.append((present[0], have, want))
                self.source[tid] = None
                continue
            self.source[tid] = ck
        # reported under the name the key got here (as transformers does): a base checkpoint's pooler read into a
        # classifier is "roberta.pooler.dense.weight"
        self.unexpected = sorted(mk for mk in mapping.values() if mk not in expected)
        ignore_missing = getattr(model, "_keys_to_ignore_on_load_missing", None) or ()
        ignore_unexpected = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()
        self.missing = sorted(k for k in missing if not any(re.search(p, k) for p in ignore_missing))
        self.unexpected = [k for k in self.unexpected if not any(re.search(p, k) for p in ignore_unexpected)]
        self.mismatched = mismatched
        if mismatched and not ignore_mismatched_sizes:
            raise CheckpointError(_mismatch_message(mismatched, ckpt.directory))

    def n_tensors(self) -> int:
        return sum(1 for s in self.source.values() if s is not None)


def _mismatch_message(mismatched, directory) -> str:
    lines = [f"size mismatch between the checkpoint in {directory!r} and the model:"]
    for key, have, want in mismatched[:10]:
        lines.append(f"  {key}: checkpoint shape {tuple(have)}, model shape {tuple(want)}")
    if len(mismatched) > 10:
        lines.append(f"  ... and {len(mismatched) - 10} more")
    hints = []
    head = [(k, h) for k, h, _ in mismatched if re.search(r"(classifier|qa_outputs|out_proj)", k) and h]
    if head:
        hints.append(
            f"a head with a different number of labels: pass num_labels={head[0][1][0]} to match the "
            "checkpoint, or ignore_mismatched_sizes=True to start that head afresh"
        )
    if len(head) < len(mismatched):
        hints.append(
            "a wrong model size or config (e.g. an XL config, hidden 2560, for an XXL checkpoint, hidden "
            "4096): load the config.json that came with these weights and drop size overrides"
        )
    return "\n".join(lines) + "\nThis usually means " + "; or ".join(hints) + "."


def _quantization_hook(model, quantization, *, dtype, device, method=None, options=None) -> Callable | None:
    """The seam for quantize-while-loading. ``None`` -> no hook.

    Otherwise ``xlmrxl.quantization.load_hook(model, quantization, dtype=..., device=...)`` must return a callable
    ``hook(module_name, module) -> Optional[nn.Module]``; the loader calls it for every module right after that
    module's own tensors are materialised (children are visited after their parent, so a Linear is complete when
    its hook runs). Returning a module replaces ``module`` in its parent (e.g. a ``QuantLinear`` for an
    ``nn.Linear``); returning None keeps it (quantized in place, or untouched).
    """
    if quantization is None:
        if method is not None or options:
            raise ValueError("quantization_method / quantization_options need quantization='int4'")
        return None
    # TODO(int4 helper): implement xlmrxl.quantization.load_hook with the contract above.
    try:
        from .quantization import load_hook
    except ImportError as exc:
        raise NotImplementedError(
            f"quantization={quantization!r} needs xlmrxl.quantization.load_hook, which is not available yet "
            f"({exc}); load with quantization=None"
        ) from None
    extra = {k: v for k, v in (("method", method), ("options", options)) if v is not None}
    return load_hook(model, quantization, dtype=dtype, device=device, **extra)


def _materialise(model, plan: _Plan, ckpt: _Checkpoint, device: torch.device, hook, bar) -> None:
    """Per module: allocate its own tensors on ``device`` (dtype as declared), initialise the missing ones with
    ``model._init_weights``, read the stored ones from the file, then run the quantization hook."""
    done: dict[int, torch.Tensor] = {}  # id(meta tensor) -> its materialised tensor (shared by all aliases)
    init = getattr(model, "_init_weights", None)
    for mod_name, module in list(model.named_modules()):
        own = [t for t in list(module._parameters.values()) + list(module._buffers.values()) if t is not None]
        fresh = [id(t) for t in own if id(t) in plan.groups and id(t) not in done]
        if fresh:
            for tid in fresh:
                meta = plan.meta[tid]
                new = torch.empty(meta.shape, dtype=meta.dtype, device=device)
                if isinstance(meta, nn.Parameter):
                    new = nn.Parameter(new, requires_grad=meta.requires_grad)
                for _, owner, attr, is_param in plan.groups[tid]:
                    (owner._parameters if is_param else owner._buffers)[attr] = new
                done[tid] = new
            needs_init = any(plan.source[tid] is None for tid in fresh)
            with torch.no_grad():
                if needs_init:
                    if init is None:
                        raise RuntimeError(
                            f"{type(model).__name__} has no _init_weights to initialise the missing "
                            f"tensors of {mod_name or 'the root module'}"
                        )
                    init(module)
                    # init covers the whole module, tensors loaded earlier through a tie included: read all again
                    reload = [tid for tid, t in done.items() if tid not in fresh and any(t is x for x in own)]
                else:
                    reload = []
                for tid in fresh + reload:
                    key = plan.source[tid]
                    if key is not None:
                        ckpt.read_into(key, done[tid].data)
                        if bar is not None and tid in fresh:
                            bar.update(1)
        if hook is not None:
            replacement = hook(mod_name, module)
            if replacement is not None and replacement is not module:
                parent_name, _, child = mod_name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
                for tid in fresh:  # drop our reference to the replaced tensors (quantize-while-loading frees them)
                    if len(plan.groups[tid]) == 1:
                        done[tid] = None
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(
            f"{type(model).__name__} still has tensors on the meta device after loading: "
            f"{', '.join(leftover[:5])}{' ...' if len(leftover) > 5 else ''}. Non-persistent buffers "
            "cannot come from a checkpoint; the model class must not create them on the meta device"
        )


class _NoRandomInitOnMeta(torch.overrides.TorchFunctionMode):
    """Random in-place init (``normal_``, ``uniform_``, ...) on meta tensors becomes a no-op while the model is
    built: it computes nothing there anyway, but the first meta ``normal_`` imports torch's decompositions
    (seconds). Everything else runs unchanged."""

    _OPS = {
        getattr(torch.Tensor, n)
        for n in (
            "normal_",
            "uniform_",
            "bernoulli_",
            "exponential_",
            "random_",
            "log_normal_",
            "cauchy_",
            "geometric_",
        )
        if hasattr(torch.Tensor, n)
    }
    _OPS |= {
        getattr(nn.init, n)
        for n in (
            "normal_",
            "uniform_",
            "trunc_normal_",
            "kaiming_uniform_",
            "kaiming_normal_",
            "xavier_uniform_",
            "xavier_normal_",
            "orthogonal_",
            "sparse_",
        )
        if hasattr(nn.init, n)
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._OPS:
            t = args[0] if args else kwargs.get("tensor", kwargs.get("self"))  # nn.init passes tensor=
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def _split_kwargs(cls, kwargs: dict):
    options = {k: kwargs.pop(k) for k in _LOADER_OPTIONS if k in kwargs}
    init_kwargs = {}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        params = {}
    for k in list(kwargs):
        if k in params and k not in ("self", "config"):
            init_kwargs[k] = kwargs.pop(k)
    return options, init_kwargs, kwargs


def _load_config(cls, directory: str, options: dict, overrides: dict):
    """``config.json`` (or a copy of ``config=``), then each override set as an attribute, after the file's values,
    as transformers does (so ``num_labels=5`` rebuilds ``id2label`` even when the file lists 3 labels)."""
    config = options.get("config")
    if config is None:
        if not os.path.isfile(os.path.join(directory, CONFIG_NAME)):
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {directory!r}; a checkpoint directory needs the config saved with its weights"
            )
        config = cls.config_class.from_pretrained(directory)
    else:
        import copy

        config = copy.deepcopy(config)
    for key, value in overrides.items():
        setattr(config, key, value)
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads:
        raise ValueError(f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}; fix the overrides")
    return config


def _progress_bar(progress, total_bytes: int, n: int):
    if progress is None:
        progress = total_bytes > _PROGRESS_MIN_BYTES and sys.stderr is not None and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, desc="Loading weights", unit="tensor")


def load_pretrained(
    cls,
    pretrained_model_name_or_path,
    *,
    dtype=None,
    device=None,
    backend="auto",
    quantization=None,
    output_loading_info=False,
    progress=None,
    **config_overrides,
):
    """Build ``cls`` from a checkpoint directory; see the module docstring for the rules."""
    kwargs = dict(config_overrides)
    q_method = kwargs.pop("quantization_method", None)  # xlmrxl.quantization: rtn / mse / gptq ...
    q_options = kwargs.pop("quantization_options", None)  # ... and its options (gptq: calibration, tokenizer)
    options, init_kwargs, overrides = _split_kwargs(cls, kwargs)
    if dtype is None and options.get("torch_dtype") is not None:
        dtype = options["torch_dtype"]
    device = _resolve_device(device, options.get("device_map"))
    directory = _resolve_directory(pretrained_model_name_or_path, options)
    if options.get("subfolder"):
        directory = os.path.join(directory, options["subfolder"])
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"subfolder {options['subfolder']!r} does not exist: no directory {directory!r}")
    ignored = sorted(
        k
        for k in options
        if k not in ("config", "torch_dtype", "ignore_mismatched_sizes", "device_map", "use_safetensors", "subfolder")
    )
    if ignored:
        logger.debug("xlmrxl: from_pretrained ignores %s (transformers options with no effect here)", ignored)
    config = _load_config(cls, directory, options, overrides)
    ckpt = _Checkpoint(directory, options.get("use_safetensors"))
    try:
        target = _resolve_dtype(dtype, config, ckpt)
        if not target.is_floating_point:
            raise ValueError(f"dtype={dtype!r} resolves to {target}, which is not a floating dtype")
        previous = torch.get_default_dtype()
        torch.set_default_dtype(target)  # modules create floating tensors in the target dtype ...
        try:
            with torch.device("meta"), _NoRandomInitOnMeta():  # ... and nowhere: nothing is allocated until
                model = cls(config, **init_kwargs)  # the file is read
        finally:
            torch.set_default_dtype(previous)
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # on meta: makes the tied tensors one object, so one read feeds all
        if getattr(config, "quantization_config", None) is not None:
            from .quantization import prepare_quantized_model  # an int4 checkpoint: its QuantLinear modules, on meta

            prepare_quantized_model(model, config.quantization_config)
        plan = _Plan(model, ckpt, bool(options.get("ignore_mismatched_sizes", False)))
        hook = _quantization_hook(model, quantization, dtype=target, device=device, method=q_method, options=q_options)
        bar = _progress_bar(progress, ckpt.total_bytes, plan.n_tensors())
        try:
            _materialise(model, plan, ckpt, device, hook, bar)
        finally:
            if bar is not None:
                bar.close()
    finally:
        ckpt.close()
        _STAGING.clear()
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for attr in ("torch_dtype", "dtype"):
        if hasattr(model.config, attr) or attr == "torch_dtype":
            with contextlib.suppress(Exception):
                setattr(model.config, attr, target)
    _report(model, plan, directory)
    if hasattr(model, "set_backend"):
        model.set_backend(backend)
    model.eval()
    if quantization is not None:  # gptq quantizes the loaded model here (rtn / mse were done while loading)
        try:
            from .quantization import finish_loading
        except ImportError:  # a load_hook-only quantization module (the seam's minimum)
            finish_loading = None
        if finish_loading is not None:
            finish_loading(model, quantization, method=q_method, options=q_options)
    if output_loading_info:
        info = {
            "missing_keys": list(plan.missing),
            "unexpected_keys": list(plan.unexpected),
            "mismatched_keys": list(plan.mismatched),
            "error_msgs": [],
        }
        return model, info
    return model


def _report(model, plan: _Plan, directory: str) -> None:
    name = type(model).__name__
    if plan.unexpected:
        archs = getattr(model.config, "architectures", None) or []
        log = logger.warning if name in archs else logger.info
        log(
            f"Some weights of the model checkpoint at {directory} were not used when initializing {name}: "
            f"{plan.unexpected}\n- This is expected if the checkpoint was saved from another architecture or task "
            f"(e.g. a masked-LM checkpoint loaded into a classifier); it is not expected for a checkpoint of {name}."
        )
    if plan.missing:
        logger.warning(
            f"Some weights of {name} were not initialized from the model checkpoint at {directory} and "
            f"are newly initialized: {plan.missing}\nYou should probably TRAIN this model on a down-stream "
            "task to be able to use it for predictions and inference."
        )
    if plan.mismatched:
        lines = "\n".join(
            f"- {k}: found shape {tuple(h)} in the checkpoint and {tuple(w)} in the model instantiated"
            for k, h, w in plan.mismatched
        )
        logger.warning(
            f"Some weights of {name} were not initialized from the model checkpoint at {directory} and "
            f"are newly initialized because the shapes did not match:\n{lines}\nYou should probably "
            "TRAIN this model on a down-stream task to be able to use it for predictions and inference."
        )


# =====================================================================================================================
# saving
# =====================================================================================================================
def _state_to_save(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Name -> tensor for every parameter and persistent buffer, with tied aliases (the same tensor under a second
    name) left out; the tie's source is kept (``_tied_weights_keys`` names the aliases)."""
    aliases = _alias_names(model)
    slots = list(_tensor_slots(model))
    first: dict[tuple, str] = {}
    chosen: dict[tuple, str] = OrderedDict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, _, _, _, t in slots:
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


def _shards(state: OrderedDict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
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


def _write_safetensors(path: str, state: OrderedDict[str, torch.Tensor], names: list[str]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        t = state[name]
        if t.dtype not in _TORCH_TO_ST:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _TORCH_TO_ST[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in names:
            t = state[name]
            if t.numel() == 0:
                continue
            t = t.to("cpu").contiguous()  # one tensor at a time: no second copy of the model
            f.write(memoryview(_byte_view(t)))
        f.flush()
        os.fsync(f.fileno())


def _write_bin(path: str, state: OrderedDict[str, torch.Tensor], names: list[str]) -> None:
    out = OrderedDict()
    for name in names:
        t = state[name].to("cpu")
        # a view of a bigger storage (fused QKV) would drag the whole storage into the file: store it alone
        if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        out[name] = t
    with open(path, "wb") as f:
        torch.save(out, f)
        f.flush()
        os.fsync(f.fileno())


def _save_config(model: nn.Module, directory: str, dtype: torch.dtype | None) -> None:
    config = model.config
    config.architectures = [type(model).__name__]
    if dtype is not None:
        for attr in ("torch_dtype", "dtype"):
            if hasattr(config, attr) or attr == "torch_dtype":
                with contextlib.suppress(Exception):
                    setattr(config, attr, dtype)
    config.save_pretrained(directory)
    path = os.path.join(directory, CONFIG_NAME)
    if dtype is not None and os.path.isfile(path):
        # both spellings: transformers 4.x reads torch_dtype, 5.x reads dtype
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        data["torch_dtype"] = dtype_name(dtype)
        data.setdefault("dtype", dtype_name(dtype))
        data["architectures"] = [type(model).__name__]
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False when the system cannot."""
    libc = _libc()
    fn = getattr(libc, "renameat2", None) if libc is not None else None
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _carry_over(old_dir: str, staging: str) -> None:
    """Bring the files of ``old_dir`` that a save does not own (tokenizer files, README, ...) into ``staging``,
    as hard links where the file system allows, else copies."""
    for entry in os.scandir(old_dir):
        if _OWNED_FILE.match(entry.name) or os.path.exists(os.path.join(staging, entry.name)):
            continue
        dst = os.path.join(staging, entry.name)
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        else:
            _link_or_copy(entry.path, dst)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def save_pretrained(model, save_directory, *, max_shard_size="50GB", safe_serialization=True):
    """Write ``config.json`` and the weights of ``model`` into ``save_directory`` atomically (see module docstring).
    Returns the list of weights files written."""
    max_bytes = parse_size(max_shard_size)
    target = os.path.realpath(os.fspath(save_directory))  # a symlinked directory is updated where it lives
    if os.path.exists(target) and not os.path.isdir(target):
        raise NotADirectoryError(f"save_directory {target!r} is a file; pass a directory path")
    parent, base = os.path.split(target.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    state = _state_to_save(model)
    shards = _shards(state, max_bytes)
    staging = tempfile.mkdtemp(prefix=f".{base}.xlmrxl-save-", dir=parent)
    old = None
    try:
        written = []
        ext, stem = (".safetensors", "model") if safe_serialization else (".bin", "pytorch_model")
        write = _write_safetensors if safe_serialization else _write_bin
        if len(shards) == 1:
            fname = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
            write(os.path.join(staging, fname), state, shards[0])
            written.append(fname)
        else:
            weight_map = {}
            for i, names in enumerate(shards, 1):
                fname = f"{stem}-{i:05d}-of-{len(shards):05d}{ext}"
                write(os.path.join(staging, fname), state, names)
                written.append(fname)
                weight_map.update({n: fname for n in names})
            index = {
                "metadata": {
                    "total_size": sum(t.numel() * t.element_size() for t in state.values()),
                    "total_parameters": sum(t.numel() for t in state.values()),
                },
                "weight_map": dict(sorted(weight_map.items())),
            }
            index_name = SAFE_WEIGHTS_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME
            with open(os.path.join(staging, index_name), "w", encoding="utf-8") as fh:
                json.dump(index, fh, indent=2)
                fh.write("\n")
        _save_config(model, staging, _model_dtype(model))
        if os.path.isdir(target):
            _carry_over(target, staging)
            os.chmod(staging, os.stat(target).st_mode & 0o7777)
            if _exchange(staging, target):
                old = staging  # the old directory now lives at the staging path
            else:
                old = tempfile.mkdtemp(prefix=f".{base}.xlmrxl-old-", dir=parent)
                os.rmdir(old)
                os.rename(target, old)
                os.rename(staging, target)
        else:
            os.chmod(staging, 0o777 & ~_umask())
            os.rename(staging, target)
        staging = None
    finally:
        if staging is not None and os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
        if old is not None and os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
    logger.info(f"saved {type(model).__name__} to {target} ({', '.join(written)})")
    return written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
