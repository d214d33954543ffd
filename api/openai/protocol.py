"""Wire types of the legacy completions and the embeddings answers (requests live in protocol.py)."""

from __future__ import annotations

from typing import Literal

from api.protocol import CompletionUsage, WireModel

# https://platform.openai.com/docs/api-reference/completions/object


class CompletionLogprobs(WireModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class CompletionChoice(WireModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(WireModel):
    """The whole answer, and (one choice at a time, `finish_reason` null until the end) each streamed chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


# https://platform.openai.com/docs/api-reference/embeddings/object


class Embedding(WireModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32s (encoding_format "base64")


class EmbeddingUsage(WireModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(WireModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TokenizeResponse(WireModel):
    tokens: list[int]


class DetokenizeResponse(WireModel):
    content: str


class ApplyTemplateResponse(WireModel):
    prompt: str


class RenderResponse(WireModel):
    """vLLM's render answer, as far as routers read it: the prompt's token ids."""

    model: str
    token_ids: list[int]
