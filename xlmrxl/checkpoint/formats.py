"""Weights file formats: read one ``.safetensors`` (safetensors library) or ``.bin`` (``torch.load``) file; write one.

Reading: a file is opened only after :func:`check_weights_file` has said it is a regular file that looks like its
format (a dangling symlink, a loop, a FIFO, a device, a directory, a git-LFS pointer, an HTML page are named as such).
``SafetensorsFile`` uses ``safe_open`` (the library validates the header: bounded length, JSON, dtypes, offsets that
cover the data exactly once); when it refuses a file, :func:`_diagnose` re-reads the header (length bounded by the
library's own limit and the file size) only to say *what* is wrong in our words (truncated: both sizes; overlapping
entries: both keys). ``BinFile`` uses ``torch.load(weights_only=True, mmap=True)``: nothing in the file is executed.

Tensors are read in chunks of rows (``get_slice``) and copied straight into their destination (final dtype, final
device). Both libraries read through a memory map that lives as long as the handle and whose pages count as resident
once touched; neither can release pages early, so the handle is reopened after every ``_resident_budget`` bytes read
(this, not ``madvise``, keeps the peak memory of a load near the size of the final weights).

Writing: ``safetensors.torch.save_file`` (it writes straight from each tensor's memory) on contiguous copies of the
tensors that are views (fused q/k/v, int4 scales / zeros column slices), ``torch.save`` for ``.bin``; each file is
flushed and fsynced.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import struct
import zipfile
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, UnsafeCheckpointError

# safetensors dtype names -> torch. (safetensors.torch keeps its own table private, ``_TYPES``: not an API to import.)
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

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit on the header length
_CHUNK_BYTES = 2 << 20  # rows copied per step
_MIN_RESIDENT_BUDGET = 8 << 20  # bytes read through one memory map before the handle is reopened (at least)
_LFS_PREFIX = b"version https://git-lfs"


@dataclass(frozen=True)
class Entry:
    """One stored tensor: its name, dtype, shape and size, and the file that holds it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    file: SafetensorsFile | BinFile


# =====================================================================================================================
# what is this file?
# =====================================================================================================================
def check_weights_file(path: str) -> None:
    """Raise a clear error unless ``path`` is a regular file (symlinks followed) that could be a weights file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CheckpointError(
                f"{path} is a dangling symlink (it points to {os.readlink(path)!r}, which does not exist); "
                "download the file it points to, or remove the link"
            ) from None
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as exc:  # ELOOP, EACCES, ...
        what = "a symlink loop" if exc.errno == 40 else f"unreadable ({exc.strerror})"
        raise CheckpointError(f"{path} is {what}; replace it with the weights file itself") from None
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, what in kinds:
        if test(st.st_mode):
            raise CheckpointError(f"{path} is {what}, not a weights file; put the weights file itself there")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file; put the weights file itself there")


def _head(path: str, n: int = 512) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _not_a_weights_file(path: str, head: bytes, fmt: str) -> CheckpointError | None:
    """An error for a file that is plainly something else (LFS pointer, HTML, text, empty), else None."""
    if head.startswith(_LFS_PREFIX):
        return CheckpointError(
            f"{path} is a git-LFS pointer, not the {fmt} file itself: the download fetched the pointer only; "
            "run `git lfs pull` in the repository (or download the file directly)"
        )
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return CheckpointError(
            f"{path} is an HTML/XML page, not a {fmt} checkpoint (a failed or redirected download?); download it again"
        )
    if not head:
        return CheckpointError(f"{path} is empty, not a {fmt} checkpoint; download or save it again")
    return None


# =====================================================================================================================
# safetensors
# =====================================================================================================================
def _resident_budget(size: int) -> int:
    return max(_MIN_RESIDENT_BUDGET, size // 32)


class _Pin:
    """An open descriptor of a weights file: every (re)opening reads the file that was opened first, through
    ``/proc/self/fd``, even when a save renames another file over its name meanwhile."""

    def __init__(self, path: str):
        self._file = open(path, "rb")  # noqa: SIM115 (held until close)
        self.size = os.fstat(self._file.fileno()).st_size
        self._path = path

    def path(self) -> str:
        if not self._file.closed:
            proc = f"/proc/self/fd/{self._file.fileno()}"
            if os.path.exists(proc):
                return proc
        return self._path

    def close(self) -> None:
        self._file.close()


class SafetensorsFile:
    """One ``.safetensors`` file, opened with ``safe_open``; tensors are read on demand, chunk by chunk."""

    def __init__(self, path: str):
        check_weights_file(path)
        self.path = path
        self._pin = _Pin(path)
        self.size = self._pin.size
        self._budget = _resident_budget(self.size)
        self._handle = None
        self._since_open = 0
        handle = self._open()
        self.metadata: dict[str, str] = dict(handle.metadata() or {})
        self.entries: dict[str, Entry] = {}
        for name in handle.keys():
            sl = handle.get_slice(name)
            st_dtype = sl.get_dtype()
            if st_dtype not in _ST_TO_TORCH:
                raise CheckpointError(
                    f"{path}: tensor {name!r} is stored as {st_dtype}, which this torch cannot hold "
                    f"(known: {', '.join(sorted(_ST_TO_TORCH))})"
                )
            dtype = _ST_TO_TORCH[st_dtype]
            shape = tuple(int(s) for s in sl.get_shape())
            numel = 1
            for s in shape:
                numel *= s
            self.entries[name] = Entry(name, dtype, shape, numel * _itemsize(dtype), self)

    def _open(self):
        try:
            self._handle = safe_open(self._pin.path(), framework="pt", device="cpu")
        except SafetensorError as exc:
            raise _diagnose(self.path, str(exc)) from None
        except OSError as exc:
            raise CheckpointError(f"{self.path} could not be opened ({exc})") from None
        self._since_open = 0
        return self._handle

    def read_into(self, entry: Entry, dest: torch.Tensor) -> None:
        """Copy ``entry`` into ``dest`` (any dtype / device of the same shape), one chunk of rows at a time."""
        if len(entry.shape) == 0 or entry.nbytes == 0:
            dest.copy_(self._reader().get_tensor(entry.name))
            return
        row_bytes = entry.nbytes // entry.shape[0]
        step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        for a in range(0, entry.shape[0], step):
            b = min(a + step, entry.shape[0])
            dest[a:b].copy_(self._reader().get_slice(entry.name)[a:b])
            self._since_open += (b - a) * row_bytes

    def _reader(self):
        if self._handle is None or self._since_open >= self._budget:
            self._handle = None  # unmaps the pages read so far (see the module docstring)
            self._open()
        return self._handle

    def close(self) -> None:
        self._handle = None
        self._pin.close()


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _diagnose(path: str, library_message: str) -> CheckpointError:
    """Turn a refusal by the safetensors library into a message that says what is wrong with ``path``."""
    size = os.path.getsize(path)
    fix = "re-download or re-save the checkpoint"
    head = _head(path)
    plain = _not_a_weights_file(path, head, "safetensors")
    if plain is not None:
        return plain
    if size < 8:
        return CheckpointError(
            f"{path} is truncated or corrupted: expected at least 8 bytes (the header length), found {size}; {fix}"
        )
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES:
        return CheckpointError(
            f"{path} is not a safetensors file or is corrupted: its header length field says {n} bytes, over "
            f"the format's limit of {MAX_HEADER_BYTES}; {fix}"
        )
    if 8 + n > size:
        return CheckpointError(
            f"{path} is truncated or corrupted: its header claims {n} bytes, so the file should have at least "
            f"{8 + n} bytes, but it has {size}; {fix}"
        )
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        return CheckpointError(
            f"{path}: the safetensors header ({n} bytes) is not valid JSON ({detail}); the file is corrupted or "
            "not a safetensors file"
        )
    if not isinstance(header, dict):
        return CheckpointError(f"{path}: the safetensors header is JSON but not an object; the file is corrupted")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            return CheckpointError(
                f"{path}: header entry {name!r} lacks a valid dtype / shape / data_offsets ({str(info)[:200]}); "
                f"the file is corrupted ({library_message})"
            )
        spans.append((begin, end, name))
    spans.sort()
    for (b1, e1, k1), (b2, e2, k2) in zip(spans, spans[1:]):
        if b2 < e1:
            return CheckpointError(
                f"{path}: tensors {k1!r} (bytes {b1}..{e1}) and {k2!r} (bytes {b2}..{e2}) overlap in the file; "
                f"the file is corrupted or crafted; {fix}"
            )
    end_max = max((e for _, e, _ in spans), default=0)
    if 8 + n + end_max > size:
        return CheckpointError(
            f"{path} is truncated or corrupted: its header describes {8 + n + end_max} bytes but the file has only "
            f"{size} bytes; {fix}"
        )
    return CheckpointError(f"{path} is not a valid safetensors file ({library_message}); {fix}")


# =====================================================================================================================
# pytorch_model.bin
# =====================================================================================================================
class BinFile:
    """One ``pytorch_model*.bin`` file, loaded with ``weights_only=True``, memory-mapped when it is a zip file (every
    ``torch.save`` since torch 1.6); a legacy non-zip file cannot be mapped and is read whole."""

    def __init__(self, path: str):
        check_weights_file(path)
        self.path = path
        self._pin = _Pin(path)
        self.size = self._pin.size
        head = _head(self._pin.path())
        plain = _not_a_weights_file(path, head, "PyTorch")
        if plain is not None:
            raise plain
        zipped = head.startswith(b"PK\x03\x04")
        self.mapped = zipped and zipfile.is_zipfile(self._pin.path())
        if zipped and not self.mapped:
            raise CheckpointError(
                f"{path} could not be read as a PyTorch checkpoint: it is truncated or corrupted (a zip archive "
                "without its central directory); re-download or re-save it"
            )
        if not zipped and not head.startswith(b"\x80"):  # neither torch.save's zip nor its legacy pickle
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint (it starts with {head[:16]!r}, not a zip archive or a pickle); "
                "re-download it, or point at the right file"
            )
        self._budget = _resident_budget(self.size)
        self._state = None
        self._since_open = 0
        state = self._load()
        self.entries = {
            k: Entry(k, v.dtype, tuple(v.shape), v.numel() * v.element_size(), self) for k, v in state.items()
        }
        self.metadata: dict[str, str] = bin_metadata(self._pin.path()) if self.mapped else {}

    def _load(self) -> dict:
        path = self.path
        try:
            state = torch.load(self._pin.path(), map_location="cpu", weights_only=True, mmap=self.mapped)
        except pickle.UnpicklingError as exc:
            lines = str(exc).strip().splitlines()
            detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), None)
            if detail is None:
                raise CheckpointError(
                    f"{path} could not be read as a PyTorch checkpoint: it is truncated or corrupted "
                    f"({lines[-1].strip()[:200] if lines else 'unpickling failed'}); re-download or re-save it"
                ) from None
            raise UnsafeCheckpointError(
                f"{path} holds non-tensor (arbitrary pickled) objects and was refused for safety: it was not "
                f"executed ({detail.strip()}). If you trust its source, convert it once to safetensors with "
                "transformers (from_pretrained, then save_pretrained) and load that instead."
            ) from None
        except Exception as exc:  # zip / unpickler internals: RuntimeError, EOFError, KeyError, IndexError, ...
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise CheckpointError(
                f"{path} could not be read as a PyTorch checkpoint: it is truncated or corrupted "
                f"({type(exc).__name__}: {msg[:200]}); re-download or re-save it"
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors (a state dict)")
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{path} is not a plain state dict: entries {bad[:5]} are not name -> tensor")
        self._state = state
        self._since_open = 0
        return state

    def read_into(self, entry: Entry, dest: torch.Tensor) -> None:
        """Copy ``entry`` into ``dest``, chunk by chunk, reloading the map after every budget of bytes read."""
        if self._state is None:
            self._load()
        src = self._state[entry.name]
        if src.dim() == 0 or src.numel() == 0 or not self.mapped:
            dest.copy_(src)
            return
        row_bytes = entry.nbytes // entry.shape[0]
        step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        for a in range(0, entry.shape[0], step):
            b = min(a + step, entry.shape[0])
            if self._since_open >= self._budget:
                del src
                self._state = None  # unmaps the pages read so far (see the module docstring)
                src = self._load()[entry.name]
            dest[a:b].copy_(src[a:b])
            self._since_open += (b - a) * row_bytes

    def close(self) -> None:
        self._state = None
        self._pin.close()


# =====================================================================================================================
# writing
# =====================================================================================================================
def _standalone(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is contiguous, else a contiguous copy (views such as int4 scales after q/k/v fusion)."""
    t = t.detach()
    return t if t.is_contiguous() else t.contiguous()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` to ``path`` with ``safetensors.torch.save_file``, then fsync it.

    safetensors (>= 0.7) itself writes through a ``.tmpXXXXXX`` file beside its target and renames it: a process
    killed meanwhile would leave that file in the user's checkpoint directory under a name no later save could
    claim as ours. So it writes inside ``<path>.d/`` (a directory named like ``path``: the next save removes it with
    our other temporary files when this process is gone), and the finished file moves out to ``path``."""
    scratch = path + ".d"
    os.mkdir(scratch)
    inner = os.path.join(scratch, "weights.safetensors")
    try:
        save_file({name: _standalone(t) for name, t in tensors.items()}, inner, metadata=metadata)
        _sort_metadata(inner)
        _fsync_path(inner)
        os.replace(inner, path)
    except BaseException:
        for entry in os.scandir(scratch):  # safetensors' own half-written .tmpXXXXXX, our file: nothing is left
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        os.rmdir(scratch)
        raise
    os.rmdir(scratch)


def _sort_metadata(path: str) -> None:
    """Put the ``__metadata__`` keys of the header in sorted order, in place (safetensors writes them in a random
    order: two saves of the same tensors and metadata would differ). The header keeps its length."""
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = fh.read(n)
        m = re.search(rb'"__metadata__":(\{[^{}]*\})', header)
        if m is None:
            return
        meta = json.loads(m.group(1))
        canonical = json.dumps(dict(sorted(meta.items())), separators=(",", ":"), ensure_ascii=False).encode()
        if len(canonical) != len(m.group(1)) or json.loads(canonical) != meta:
            return  # not the compact form we expect: leave it as written
        fh.seek(8 + m.start(1))
        fh.write(canonical)


BIN_METADATA = "xlmrxl_metadata.json"  # an extra record of the zip archive (torch.load reads only its own)


def bin_metadata(path: str) -> dict[str, str]:
    """The metadata an xlmrxl save stored in a ``.bin`` zip archive (``<archive>/xlmrxl_metadata.json``), else {}."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            name = f"{names[0].split('/')[0]}/{BIN_METADATA}" if names else ""
            if name not in names or z.getinfo(name).file_size > 1 << 16:
                return {}
            meta = json.loads(z.read(name).decode("utf-8"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return {}
    ok = isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    return meta if ok else {}


def write_bin(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` with ``torch.save`` (each tensor stored alone, not its whole storage), then
    ``metadata`` as an extra record of the zip archive, then fsync."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        # a view of a bigger storage (fused QKV) would drag the whole storage into the file: store it alone
        if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        out[name] = t
    with open(path, "wb") as fh:
        torch.save(out, fh)
    if metadata:
        with zipfile.ZipFile(path, "a") as z:
            prefix = z.namelist()[0].split("/")[0]
            info = zipfile.ZipInfo(f"{prefix}/{BIN_METADATA}", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, json.dumps(dict(sorted(metadata.items()))))
    _fsync_path(path)
