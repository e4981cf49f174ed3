"""COMET helpers where a COMET user looks for them: ``xlmrxl.comet.load(path, dtype=..., device=...)``.

comet (unbabel-comet) is an optional extra; it is imported only when ``load`` runs.

Progress: the model ``load`` returns keeps COMET's ``predict``, with one change of default: ``progress_bar``
(COMET's tqdm bar on stderr) follows ``xlmrxl.progress`` when not given: shown when stderr is a terminal or
``XLMRXL_PROGRESS=on``, hidden in pipes, logs and tests (``XLMRXL_PROGRESS=off``). ``progress=`` on ``load`` sets
that default for this model (True / False); ``predict(..., progress_bar=...)`` still decides per call.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from torch import nn

from .clients.comet_load import load as _load
from .parsing import DeviceArg, DtypeArg
from .progress import resolve

__all__ = ["load"]


def load(
    path_or_checkpoint: str | os.PathLike,
    dtype: DtypeArg = None,
    device: DeviceArg = None,
    quantization: str | None = None,
    *,
    progress: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``xlmrxl.clients.comet_load.load`` (COMET's loader, then ``xlmrxl.accelerate``; ``backend``,
    ``local_files_only``, ``pretrained_model`` pass through), with ``predict``'s progress bar as the module
    docstring says."""
    model = _load(path_or_checkpoint, dtype, device, quantization, **kwargs)
    with_progress_default(model, progress)
    return model


def with_progress_default(model: nn.Module, progress: bool | None = None) -> nn.Module:
    """Make ``model.predict``'s ``progress_bar`` default follow ``progress`` (None: ``xlmrxl.progress``'s rule)."""
    original = type(model).predict.__get__(model)

    @functools.wraps(original)
    def predict(*args: Any, **kw: Any) -> Any:
        if "progress_bar" not in kw and len(args) < 6:  # COMET: predict(samples, batch_size, gpus, devices, mc_dropout,
            kw["progress_bar"] = resolve(progress)  # progress_bar, ...)
        return original(*args, **kw)

    model.predict = predict
    return model
