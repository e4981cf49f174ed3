"""Corpus scale: embed, classify, fill masks or score with COMET over millions of rows, on one machine or a Ray
cluster, resumable, every row exactly once.

    import xlmrxl.corpus
    xlmrxl.corpus.run("embed", "/models/xlm-roberta-xl", "texts/", "out/", pooling="mean", normalize=True)

``run`` (``api.py``) plans blocks (``inputs.py``), runs the one worker (``worker.py``: tasks from ``tasks.py``) on the
local engine (``local.py``) or on Ray Data (``ray_engine.py``; ``xlmrxl.ray.Predictor`` for your own pipelines) and
writes durable blocks with a manifest (``store.py``); ``cli.py`` is ``xlmrxl corpus``. Needs pyarrow
(``pip install 'xlmrxl[corpus]'``); the Ray engine needs ``xlmrxl[ray]``.

``run`` resolves on first use, as the names of ``xlmrxl`` do, so that ``xlmrxl corpus --help`` (which imports
``xlmrxl.corpus.cli``) does not import torch.
"""

from __future__ import annotations

import importlib

__all__ = ["run"]


def __getattr__(name: str):
    if name != "run":
        raise AttributeError(f"module 'xlmrxl.corpus' has no attribute {name!r}")
    value = importlib.import_module(".api", __name__).run
    globals()[name] = value
    return value


def __dir__():
    return __all__
