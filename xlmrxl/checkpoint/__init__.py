"""Checkpoint IO: ``from_pretrained`` / ``save_pretrained`` for the xlmrxl model classes, without transformers.

The model classes delegate here::

    load_pretrained(cls, pretrained_model_name_or_path, *, dtype=None, device=None, backend="auto",
                    quantization=None, output_loading_info=False, progress=None, **config_overrides)
    save_pretrained(model, save_directory, *, max_shard_size="50GB", safe_serialization=True, timeout=None)

One concern per module: ``formats`` (one weights file: safetensors through the safetensors library, ``.bin`` through
``torch.load(weights_only=True, mmap=True)``, both written fsynced), ``files`` (which weights file is live, the index
and its shards, checked against each other), ``plan`` (which stored tensor feeds each model tensor; materialising
the model module by module), ``load`` (``load_pretrained``), ``save`` (the transactional ``save_pretrained``),
``lock`` (one save at a time per directory), ``journal`` (a save's commit point, rolled forward by the next save or
load), ``record`` (the config digest the weights record; the files a save owns).
"""

from .errors import CheckpointError, SaveFailedError, SaveLockTimeout, UnsafeCheckpointError
from .files import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_FILES,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    Checkpoint,
    is_checkpoint_dir,
)
from .load import load_pretrained
from .save import save_pretrained

__all__ = [
    "CONFIG_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_FILES",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "Checkpoint",
    "CheckpointError",
    "SaveFailedError",
    "SaveLockTimeout",
    "UnsafeCheckpointError",
    "is_checkpoint_dir",
    "load_pretrained",
    "save_pretrained",
]
