"""Wire types of reranking: the Jina / Cohere shape (`/v1/rerank`, `/v2/rerank`) and Hugging Face TEI's
(`/rerank` with `texts`), which llama-server also answers."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from api.protocol import WireModel

MAX_DOCUMENTS = 1000


def _document_text(document: Any) -> str:
    """A document as a string, or Cohere's / Jina's object form `{"text": ...}`."""
    text = document.get("text") if isinstance(document, dict) else document
    if not isinstance(text, str) or not text:
        raise ValueError("each document must be a non-empty string or an object with a non-empty 'text'")
    return text


class RerankRequest(WireModel):
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[list[Any], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    model: str | None = None
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = True

    @field_validator("documents")
    @classmethod
    def _texts(cls, documents: list[Any]) -> list[str]:
        return [_document_text(document) for document in documents]


class TeiRerankRequest(WireModel):
    query: Annotated[str, Field(min_length=1)]
    texts: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    model: str | None = None
    return_text: bool = False
    raw_scores: bool = False  # the model's logits instead of probabilities
    truncate: bool = False


class RerankDocument(WireModel):
    text: str


class RerankResult(WireModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(WireModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(WireModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class TeiRank(WireModel):
    index: int
    score: float
    text: str | None = None
