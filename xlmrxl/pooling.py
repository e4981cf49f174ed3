"""The one pooling default of every embedding surface (CLI ``embed``, ``corpus embed``, the feature-extraction
pipeline when asked to pool), and a checkpoint's own pooling (sentence-transformers' ``modules.json`` /
``1_Pooling/config.json``), which wins over the default.

Contract
--------
- ``DEFAULT_POOLING = "mean"``: the mean of the last hidden state over real tokens (what sentence-transformers
  uses unless a model says otherwise). ``"cls"`` is the ``<s>`` state.
- ``pooling="auto"`` (the default of ``xlmrxl embed`` and ``xlmrxl corpus embed``; ``pipeline("feature-extraction",
  pooling="auto")``): the checkpoint's pooling when it has a sentence-transformers pooling config, else
  ``DEFAULT_POOLING``; a ``Normalize`` module in ``modules.json`` turns L2 normalisation on. The choice and where it
  came from are logged at WARNING on the ``xlmrxl`` logger (stderr), once per checkpoint directory.
- An explicit ``"cls"`` / ``"mean"`` always wins; when it differs from the checkpoint's, that is logged too.
- A checkpoint pooling we do not implement (max, weighted mean, last token, several modes at once) is a
  ``ValueError`` naming it and the fix (pass ``cls`` or ``mean`` explicitly).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger("xlmrxl")

DEFAULT_POOLING = "mean"
POOLINGS = ("cls", "mean")
AUTO = "auto"
HELP = (
    f"auto (default): the checkpoint's sentence-transformers pooling if it has one, else {DEFAULT_POOLING}; "
    "cls: the <s> state; mean: the mean over real tokens"
)
_ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SAID: set[tuple] = set()


def checkpoint_pooling(directory: str | os.PathLike | None) -> tuple[str, bool, str] | None:
    """``(pooling, normalize, source)`` from a sentence-transformers checkpoint directory, or None when it says
    nothing about pooling."""
    if directory is None or not Path(directory).is_dir():
        return None
    d = Path(directory)
    modules: list = []
    if (d / "modules.json").is_file():
        try:
            modules = json.loads((d / "modules.json").read_text())
        except ValueError as exc:
            raise ValueError(f"{str(d / 'modules.json')!r} is not valid JSON ({exc})") from exc
    pool_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("models.Pooling")), None)
    cfg_path = d / (pool_dir or "1_Pooling") / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text())
    if "pooling_mode" in cfg and isinstance(cfg["pooling_mode"], str):
        modes = [cfg["pooling_mode"].replace("mean_tokens", "mean").replace("cls_token", "cls")]
    else:
        modes = [name for key, name in _ST_MODES.items() if cfg.get(key)]
    if modes not in (["cls"], ["mean"]):
        raise ValueError(
            f"{str(cfg_path)!r} asks for pooling {'+'.join(modes) or 'none'}, which xlmrxl does not implement; "
            "pass pooling 'cls' or 'mean' explicitly (--pooling cls|mean)"
        )
    normalize = any(str(m.get("type", "")).endswith("models.Normalize") for m in modules)
    return modes[0], normalize, str(cfg_path.relative_to(d))


def resolve_pooling(
    pooling: str | None, directory: str | os.PathLike | None, normalize: bool = False
) -> tuple[str, bool]:
    """The pooling and normalisation to use: ``"auto"`` -> the checkpoint's (see the module docstring), else the
    default; an explicit ``"cls"`` / ``"mean"`` as given."""
    if pooling != AUTO and pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; use 'auto', 'cls' or 'mean'")
    try:
        found = checkpoint_pooling(directory)
    except ValueError:
        if pooling != AUTO:
            found = None  # an explicit choice does not need the checkpoint's
        else:
            raise
    key = (str(directory), pooling, normalize)
    if pooling == AUTO:
        if found is None:
            return DEFAULT_POOLING, normalize
        mode, ckpt_norm, source = found
        if key not in _SAID:
            _SAID.add(key)
            extra = " and L2 normalisation (its modules.json has Normalize)" if ckpt_norm and not normalize else ""
            logger.warning("xlmrxl: pooling %s%s, as the checkpoint's %s says", mode, extra, source)
        return mode, normalize or ckpt_norm
    if found is not None and found[0] != pooling and key not in _SAID:
        _SAID.add(key)
        logger.warning("xlmrxl: pooling %s as asked; the checkpoint's %s says %s", pooling, found[2], found[0])
    return pooling, normalize
