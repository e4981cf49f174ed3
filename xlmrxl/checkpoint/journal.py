"""The save journal: the one commit point of a save, and its roll-forward by the next xlmrxl save or load.

A save holds the directory's lock (:mod:`.lock`) throughout. Before it creates any file it writes
``.xlmrxl-save.journal`` in the state ``"writing"``, listing every temporary name it will use; then it writes and
fsyncs its files under those names. Its **commit point** is the atomic replacement of the journal by one in the state
``"commit"``, listing the renames (temporary name -> final name) and the deletions (the previous save's files) still
to do. Then it does them, fsyncs the directory and removes the journal.

Whoever next takes the lock (a save, or a load that finds a journal) finishes the job: a ``"commit"`` journal is
rolled forward (the renames not yet done, then the deletions), a ``"writing"`` one is discarded (its temporary files
removed). Only names a journal lists are ever removed: a file of the user's that looks like one of ours stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from .errors import CheckpointError
from .lock import LOCK_NAME, clear_stale, locked

logger = logging.getLogger("xlmrxl")

JOURNAL_NAME = ".xlmrxl-save.journal"
_JOURNAL_NEW = JOURNAL_NAME + ".new"
TEMP_PREFIX = ".xlmrxl-tmp."
_FORMAT = "xlmrxl-save-journal/1"


def fsync_dir(directory: str) -> None:
    """fsync the directory entry list (renames and unlinks become durable)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the renames are still atomic
        pass
    finally:
        os.close(fd)


def temp_name(token: str, name: str) -> str:
    """The temporary name of ``name`` in the save ``token``."""
    return f"{TEMP_PREFIX}{token}.{name}"


def write(directory: str, entry: dict[str, Any]) -> None:
    """Replace the journal of ``directory`` by ``entry`` atomically (written, fsynced, renamed, directory fsynced)."""
    new = os.path.join(directory, _JOURNAL_NEW)
    with open(new, "w", encoding="utf-8") as fh:
        json.dump({"format": _FORMAT, **entry}, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(new, os.path.join(directory, JOURNAL_NAME))
    fsync_dir(directory)


def _plain(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def read(directory: str) -> dict[str, Any] | None:
    """The journal of ``directory``, checked; None when there is none."""
    path = os.path.join(directory, JOURNAL_NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            entry = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}); it is not a journal of an xlmrxl save") from None
    token = entry.get("token") if isinstance(entry, dict) else None
    lists = isinstance(entry, dict) and all(isinstance(entry.get(k, []), list) for k in ("temps", "renames", "deletes"))
    ok = (
        lists
        and entry.get("format") == _FORMAT
        and entry.get("state") in ("writing", "commit")
        and isinstance(token, str)
        and _plain(token)
        and all(_plain(t) and t.startswith(temp_name(token, "")) for t in entry.get("temps", []))
        and all(isinstance(r, list) and len(r) == 2 and all(map(_plain, r)) for r in entry.get("renames", []))
        and all(_plain(d) for d in entry.get("deletes", []))
    )
    if not ok:
        raise CheckpointError(
            f"{path} is not a journal written by an xlmrxl save (format {_FORMAT}); if you created it, move it away"
        )
    return entry


def _remove_temp(path: str) -> None:
    """Remove a temporary file of ours, or a scratch directory of ours with the files in it (never deeper)."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            for inner in os.scandir(path):
                if inner.is_file(follow_symlinks=False) or inner.is_symlink():
                    os.unlink(inner.path)
            os.rmdir(path)
        else:
            os.unlink(path)


def _finish(directory: str, entry: dict[str, Any]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, _JOURNAL_NEW))
    for t in entry.get("temps", []):
        _remove_temp(os.path.join(directory, t))
    fsync_dir(directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, JOURNAL_NAME))
    fsync_dir(directory)


def apply(directory: str, entry: dict[str, Any]) -> None:
    """Roll a ``"commit"`` journal forward: the renames still to do, the deletions, then the journal goes."""
    for src, dst in entry["renames"]:
        src_path = os.path.join(directory, src)
        if os.path.lexists(src_path):  # else: renamed before the crash
            os.replace(src_path, os.path.join(directory, dst))
    fsync_dir(directory)
    for name in entry["deletes"]:
        path = os.path.join(directory, name)
        if not os.path.isdir(path) or os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    _finish(directory, entry)


def discard(directory: str, entry: dict[str, Any]) -> None:
    """Undo a save that did not reach its commit point: its temporary files and the journal go."""
    _finish(directory, entry)


def recover(directory: str) -> bool:
    """With the lock held: finish or undo the save a journal in ``directory`` describes. True when there was one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, _JOURNAL_NEW))  # a journal never renamed into place: not a commit
    entry = read(directory)
    if entry is None:
        return False
    if entry["state"] == "commit":
        apply(directory, entry)
        logger.info("%s: finished an interrupted save (rolled its journal forward)", directory)
    else:
        discard(directory, entry)
        logger.info("%s: removed the temporary files of an interrupted save", directory)
    return True


def busy(directory: str) -> bool:
    """True when a save into ``directory`` may be running or unfinished (its lock file or journal is there)."""
    return any(os.path.lexists(os.path.join(directory, n)) for n in (LOCK_NAME, JOURNAL_NAME, _JOURNAL_NEW))


def roll_forward(directory: str, *, wait: bool = False) -> None:
    """For a load: finish an interrupted save when ``directory`` holds a journal (under the lock). ``wait=True``
    also waits for a save in progress (when a load found the files of two saves)."""
    pending = any(os.path.lexists(os.path.join(directory, n)) for n in (JOURNAL_NAME, _JOURNAL_NEW))
    has_lock = os.path.lexists(os.path.join(directory, LOCK_NAME))
    if not pending and not (wait and has_lock):
        if has_lock:
            clear_stale(directory)
        return
    try:
        with locked(directory):
            recover(directory)
    except PermissionError as exc:
        if os.path.lexists(os.path.join(directory, JOURNAL_NAME)):
            raise CheckpointError(
                f"{directory} holds {JOURNAL_NAME}: a save into it was interrupted, and finishing it needs write "
                f"access ({exc.strerror}). Load it once as a user who can write there (or save the model again)"
            ) from None
