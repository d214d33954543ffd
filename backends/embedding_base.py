"""What the embedding engines (transformers encoders, llama.cpp embedding GGUFs) share: they serve
`/v1/embeddings`, tokenize, and refuse generation with a 400 that says where to go instead."""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass

from backends.base import ChatTemplateInfo, Engine, EngineCapabilities, GenerationRequest
from errors import InvalidRequest

EMBEDDING_CAPABILITIES = EngineCapabilities(
    streaming=False, logprobs=False, logit_bias=False, seed=False, generation=False, embeddings=True
)
RERANK_CAPABILITIES = EngineCapabilities(  # rerankers (cross-encoders), on either engine
    streaming=False, logprobs=False, logit_bias=False, seed=False, generation=False, rerank=True
)


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


def l2_normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else vector


class EmbeddingEngine(Engine):
    capabilities = EMBEDDING_CAPABILITIES
    model_id: str
    dimensions: int  # the length of every vector this model returns

    @property
    def chat_template(self) -> ChatTemplateInfo:
        return ChatTemplateInfo(source="", origin="embedding model")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    async def generate(self, request: GenerationRequest):
        raise InvalidRequest(f"'{self.model_id}' is an embedding model: use /v1/embeddings.", param="model")
        yield  # pragma: no cover - an async generator like the other engines

    @abstractmethod
    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        """One vector per input, in order; inputs longer than the model's context are a 400."""
