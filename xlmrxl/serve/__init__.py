"""``xlmrxl serve``: XLM-RoBERTa-XL / XXL models, their fine-tunes, sentence-transformers models and COMET metrics
behind HTTP, with requests from many clients batched padding-free.

    from xlmrxl.serve import create_app
    app = create_app("/models/xlm-roberta-xl-embed", max_batch_tokens=16384)   # any ASGI server runs it

``app.py`` builds the FastAPI app, ``routes.py`` holds the routes (text-embeddings-inference's, OpenAI's
``/v1/embeddings``, ``/fill-mask``, ``/comet``), ``engine.py`` the bounded queue and the per-device workers,
``runners.py`` the models, ``cli.py`` is ``xlmrxl serve``, ``ray.py`` deploys on Ray Serve. Needs
``pip install 'xlmrxl[serve]'``. ``create_app`` resolves on first use, so ``xlmrxl serve --help`` stays instant.
"""

from __future__ import annotations

import importlib

__all__ = ["create_app"]


def __getattr__(name: str):
    if name != "create_app":
        raise AttributeError(f"module 'xlmrxl.serve' has no attribute {name!r}")
    value = importlib.import_module(".app", __name__).create_app
    globals()[name] = value
    return value


def __dir__():
    return __all__
