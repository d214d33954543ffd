"""Scoring documents against a query with whichever kind of model was asked: a reranker ranks natively (a
cross-encoder reads query and document together), an embedding model the operator marked `rerank: cosine` ranks by
the cosine of the query's and each document's vectors; anything else is a 400 that says what would work."""

from __future__ import annotations

from backends.base import Ranking
from backends.registry import LoadedModel
from errors import InvalidRequest


async def rank(model: LoadedModel, query: str, documents: list[str]) -> Ranking:
    engine = model.engine
    if engine.capabilities.rerank:
        return await engine.rerank(query, documents)
    if engine.capabilities.embeddings and model.entry.rerank == "cosine":
        vectors = await engine.embed([query, *documents])
        question = vectors.vectors[0]  # the engines return L2-normalised vectors: the dot product is the cosine
        scores = [sum(a * b for a, b in zip(question, vector, strict=True)) for vector in vectors.vectors[1:]]
        return Ranking(scores=scores, prompt_tokens=vectors.prompt_tokens)
    raise InvalidRequest(
        f"'{model.model_id}' does not rerank. Use a reranker (a cross-encoder checkpoint, or a GGUF with rank "
        "pooling), or an embedding model marked `rerank: cosine` in models.yaml.", param="model")
