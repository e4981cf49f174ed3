"""Request bodies of ``xlmrxl serve`` as pydantic models (FastAPI validates them; a bad body is a 422).

The shapes are text-embeddings-inference's (``/embed``, ``/predict``, ``/rerank``, ``/tokenize``), OpenAI's
(``/v1/embeddings``) and ours (``/fill-mask``, ``/comet``). Unknown fields are ignored, as those servers do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Direction = Literal["left", "right", "Left", "Right"]


class EmbedRequest(BaseModel):
    inputs: str | list[str]
    normalize: bool | None = None  # None: the server's --normalize (default true, as TEI)
    truncate: bool | None = None
    truncation_direction: Direction = "right"


class PredictRequest(BaseModel):
    inputs: str | list[str] | list[list[str]]
    raw_scores: bool = False
    truncate: bool | None = None
    truncation_direction: Direction = "right"


class RerankRequest(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Direction = "right"


class TokenizeRequest(BaseModel):
    inputs: str | list[str]
    add_special_tokens: bool = True


class OpenAIEmbeddingsRequest(BaseModel):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class FillMaskRequest(BaseModel):
    inputs: str | list[str]
    top_k: int = Field(5, ge=1, le=100)
    truncate: bool | None = None
    truncation_direction: Direction = "right"


class CometRequest(BaseModel):
    src: list[str]
    mt: list[str]
    ref: list[str] | None = None
