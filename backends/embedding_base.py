"""What the embedding engines (transformers encoders, llama.cpp embedding GGUFs) share: they serve
`/v1/embeddings`, tokenize, and refuse generation with a 400 that says where to go instead."""

from __future__ import annotations

import math
import threading
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
# what makes an encoder engine a reranker (the llama.cpp engine knows only once the GGUF is open)
RERANKER = {"capabilities": RERANK_CAPABILITIES, "kind": "a reranker", "endpoint": "/v1/rerank"}


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


def l2_normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else vector


class EncoderEngine(Engine):
    """A model that reads text without generating any (an embedding model, a reranker): no chat template, and
    every generating endpoint is a 400 that names the endpoint this model serves."""

    capabilities = EMBEDDING_CAPABILITIES
    kind = "an embedding model"  # what the model is, for messages
    endpoint = "/v1/embeddings"  # where to use it instead

    def __init__(self, model_id: str, context_length: int) -> None:
        """Called by each engine's constructor once its model is open (the input limit comes from the model)."""
        self.model_id = model_id
        self._context_length = context_length  # the most tokens one input (a query and document pair) may have
        self._lock = threading.Lock()  # one batch at a time: requests run on worker threads, the model is shared

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def chat_template(self) -> ChatTemplateInfo:
        return ChatTemplateInfo(source="", origin=self.kind.split(" ", 1)[1])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def refusal(self) -> InvalidRequest:
        return InvalidRequest(f"'{self.model_id}' is {self.kind}: use {self.endpoint}.", param="model")

    async def generate(self, request: GenerationRequest):
        raise self.refusal()
        yield  # pragma: no cover - an async generator like the other engines


class EmbeddingEngine(EncoderEngine):
    dimensions: int  # the length of every vector this model returns

    @abstractmethod
    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        """One vector per input, in order; inputs longer than the model's context are a 400."""
