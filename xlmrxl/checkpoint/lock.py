"""The save lock: ``fcntl.flock`` on ``.xlmrxl-save.lock`` inside the checkpoint directory serialises saves.

The holder removes the lock file when it lets go (a directory keeps no trace of a finished save). A process that
waited on a lock file that was removed meanwhile finds, once it holds the lock, that the path no longer names the file
it locked, and starts again with the new file: only one process at a time holds the lock of a directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterator

from .errors import SaveLockTimeout

try:
    import fcntl
except ImportError:  # Windows: no flock; saves are not serialised there (each is still a transaction)
    fcntl = None

LOCK_NAME = ".xlmrxl-save.lock"
_POLL_S = 0.02
# file systems without flock (some network mounts): saves there are not serialised, but still transactions
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOSYS", errno.EOPNOTSUPP)}
logger = logging.getLogger("xlmrxl")


def _warn_no_locks(directory: str, exc: OSError) -> None:
    logger.warning(
        "%s: the file system cannot lock files (%s); two saves into it at once are not serialised, so save from "
        "one process at a time",
        directory,
        exc.strerror,
    )


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)


def _holder(path: str) -> str:
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="ascii") as fh:
            return f"pid {int(fh.read().strip() or 'x')}"
    return "another process"


def acquire(directory: str, timeout: float | None = None, *, create: bool = False) -> int:
    """Lock ``directory`` for a save; returns the lock file's descriptor (give it to :func:`release`).

    ``timeout=None`` waits as long as it takes; otherwise a :class:`SaveLockTimeout` after ``timeout`` seconds.
    ``create=True`` re-creates ``directory`` when it goes away meanwhile."""
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0):
        raise ValueError(f"timeout={timeout!r}: pass the seconds to wait for another save (>= 0), or None to wait")
    path = os.path.join(directory, LOCK_NAME)
    deadline = None if timeout is None else time.monotonic() + timeout
    if fcntl is None:
        return -1
    while True:
        flags = os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o666)
            except PermissionError:  # another user's lock file in a shared directory: locking needs no write
                fd = os.open(path, os.O_RDONLY | flags)
        except FileNotFoundError:  # the directory went away (a failed save removed the one it created)
            if not create:
                raise
            os.makedirs(directory, exist_ok=True)
            continue
        try:
            if deadline is None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:
                    if exc.errno not in _NO_LOCKS:
                        raise
                    _warn_no_locks(directory, exc)
                    return fd
            else:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno in _NO_LOCKS:
                            _warn_no_locks(directory, exc)
                            return fd
                        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                            raise
                    if time.monotonic() >= deadline:
                        raise SaveLockTimeout(
                            f"another save into {directory} is still running ({_holder(path)} holds {path}); "
                            f"waited {timeout:g} s. Wait for it to finish, or pass a larger timeout= "
                            "(timeout=None waits as long as it takes)"
                        )
                    time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            with contextlib.suppress(OSError):  # who holds it, for the message of a save that times out
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            return fd
        os.close(fd)  # the previous holder removed the file we waited on: lock the current one


def release(directory: str, fd: int) -> None:
    """Remove the lock file (still holding the lock, so nobody else can be using it), then let go."""
    if fd < 0:
        return
    try:
        path = os.path.join(directory, LOCK_NAME)
        if _same_file(fd, path):
            with contextlib.suppress(OSError):  # gone already, or a directory this process cannot write
                os.unlink(path)
    finally:
        os.close(fd)


def clear_stale(directory: str) -> None:
    """Remove a lock file that no process holds (left by a save killed after its last step); never waits."""
    path = os.path.join(directory, LOCK_NAME)
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a save holds it
        os.close(fd)
        return
    release(directory, fd)


@contextlib.contextmanager
def locked(directory: str, timeout: float | None = None, *, create: bool = False) -> Iterator[None]:
    """``with locked(directory, timeout):`` holds the save lock of ``directory``."""
    fd = acquire(directory, timeout, create=create)
    try:
        yield
    finally:
        release(directory, fd)
