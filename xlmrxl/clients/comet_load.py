"""Load an accelerated COMET model from a local COMET checkpoint (``checkpoints/model.ckpt`` + ``hparams.yaml``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from ..backend import Backend
from ..hf import accelerate
from ..parsing import DeviceArg, DtypeArg, parse_device, parse_dtype

logger = logging.getLogger("xlmrxl")

__all__ = ["load"]


def _checkpoint_file(path_or_checkpoint) -> Path:
    p = Path(path_or_checkpoint).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "model.ckpt"
    if not p.is_file():
        raise FileNotFoundError(
            f"no COMET checkpoint at {path_or_checkpoint}: give a COMET model directory (holding "
            "checkpoints/model.ckpt and hparams.yaml) or the path of its checkpoints/model.ckpt; for a hub name, "
            "download it first with comet.download_model(name)"
        )
    if not (p.parents[1] / "hparams.yaml").is_file():
        raise FileNotFoundError(f"{p.parents[1] / 'hparams.yaml'} is missing: COMET reads the model class from it")
    return p


def _encoder_is_local(name: str) -> bool:
    """Are the encoder's files (config and tokenizer) on this machine: a directory, or in the hub cache?"""
    if os.path.isdir(name):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - comet depends on huggingface_hub
        return False
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a repo id
        return False


def load(
    path_or_checkpoint: str | os.PathLike,
    dtype: DtypeArg = None,
    device: DeviceArg = None,
    quantization: str | None = None,
    *,
    backend: Backend | str | None = "auto",
    local_files_only: bool | None = None,
    pretrained_model: str | None = None,
) -> nn.Module:
    """A COMET model loaded with COMET's own loader, in eval mode without gradients, cast to ``dtype``, moved to
    ``device``, then passed through ``xlmrxl.accelerate`` (``backend``, ``quantization``: None or "int4").
    ``dtype`` / ``device`` mean what they mean everywhere in xlmrxl (``xlmrxl.parsing``); None or ``dtype="auto"``:
    as stored, ``device=None``: where COMET loads it (CPU).

    ``path_or_checkpoint``: a COMET model directory or its ``checkpoints/model.ckpt``. COMET rebuilds the encoder from
    the config and tokenizer of ``hparams.yaml``'s ``pretrained_model`` (the weights come from the checkpoint);
    ``pretrained_model=`` points it at another directory holding them. ``local_files_only`` (None: True when those
    files are a local directory or already in the hub cache) keeps COMET off the network."""
    ckpt = _checkpoint_file(path_or_checkpoint)
    dt = parse_dtype(dtype)  # bad values fail before anything is loaded
    dt = None if dt == "auto" else dt  # "auto": the dtype the checkpoint holds, i.e. no cast
    dev = None if device is None else parse_device(device)
    import yaml  # comet's dependencies (optional extra): imported only when a COMET model is loaded
    from comet.models import load_from_checkpoint, str2model

    with open(ckpt.parents[1] / "hparams.yaml") as f:
        hparams = yaml.safe_load(f) or {}
    encoder_files = pretrained_model or str(hparams.get("pretrained_model", ""))
    if local_files_only is None:
        local_files_only = _encoder_is_local(encoder_files)
    if pretrained_model is None:
        model = load_from_checkpoint(str(ckpt), local_files_only=local_files_only)
    else:  # COMET's loader with one hyper-parameter overridden (Lightning's load_from_checkpoint takes overrides)
        model = str2model[hparams["class_identifier"]].load_from_checkpoint(
            ckpt,
            load_pretrained_weights=False,
            map_location=torch.device("cpu"),
            strict=False,
            local_files_only=local_files_only,
            pretrained_model=pretrained_model,
        )
    model.eval().requires_grad_(False)
    if dt is not None or dev is not None:
        model.to(device=dev, dtype=dt)
    logger.info("xlmrxl: loaded COMET %s from %s", type(model).__name__, ckpt)
    return accelerate(model, backend=backend, quantization=quantization)
