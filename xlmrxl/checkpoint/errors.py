"""The checkpoint errors: every problem with a checkpoint's files is a ``CheckpointError`` naming the file."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: corrupted or truncated file, bad index, shape mismatch."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.bin`` file holding pickled objects other than tensors; it was refused, not executed."""


class SaveLockTimeout(TimeoutError):
    """Another save into the same directory held its lock for longer than ``save_pretrained(timeout=...)``."""


class SaveFailedError(OSError):
    """A save could not write its files (full disk, no permission); the checkpoint already there is unchanged."""
