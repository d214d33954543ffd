"""The engine interface: what every inference backend takes and yields.

Engines receive an already-rendered prompt plus sampling settings (`GenerationRequest`) and yield typed
chunks (`TokenDelta`, then one `GenerationFinished`). They know nothing about HTTP, SSE or OpenAI shapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from chat.grammars import GrammarSpec
from chat.templates import ChatTemplateInfo
from errors import NotSupported

__all__ = ["ChatTemplateInfo", "GrammarSpec"]  # defined with the chat logic that reads them; engines fill them

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReasoningControl:
    """A thinking model's reasoning block for one request: the engine counts its tokens, and closes it itself
    (writes `close` plus a blank line) once `budget` tokens were spent in it."""

    open: str
    close: str
    starts_inside: bool = False  # the prompt already opened the block
    budget: int | None = None  # None: no limit; 0: close at once


@dataclass(frozen=True, eq=False)
class AdapterSet:
    """LoRA adapters a request applies over its base model's weights, as the engine attached them (engines
    subclass it with their handles). Sequences' KV and cached states are shared only within one `key`."""

    model_id: str  # the adapter entry they serve
    key: str  # the adapter files (and their versions) with their scales


@dataclass(frozen=True)
class KvCacheUsage:
    """Cells of a KV cache that hold a sequence's tokens (in use, or kept for prefix reuse), of all it has."""

    used: int
    total: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.used / self.total) if self.total else 0.0


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | list[int]  # text (special-token text parsed, BOS added as the model wants) or exact token ids
    sampling: SamplingParams
    max_tokens: int | None  # None: the engine's bounded default
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; 0..20: chosen token plus that many alternatives
    grammar: GrammarSpec | None = None
    # Markers the output must show as text even where the vocabulary holds them as special tokens
    # (e.g. `[TOOL_CALLS]`, `<|python_tag|>`), so tool calls can be read back.
    preserved_tokens: tuple[str, ...] = ()
    tenant: str = ""  # who asked (an API key's label): engines' queues take turns between tenants
    reasoning: ReasoningControl | None = None  # a thinking model's block, to count, budget and close
    # max_tokens beyond the free context is cut to it instead of refused (Anthropic clients such as Claude Code
    # always ask for 32000; a local model's context rarely leaves that much)
    clamp_to_context: bool = False
    speculative: bool = True  # may use the server's speculative decoding (a request can opt out)
    adapters: AdapterSet | None = None  # LoRA adapters to apply (set by an adapter entry's engine view)
    affinity: str | None = None  # the conversation it continues (a session id, prompt_cache_key...): a slot hint
    media: tuple = ()  # chat.media.MediaPart each, in the order of the prompt's media markers


@dataclass(frozen=True)
class TopLogprob:
    token: str
    token_bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    token_bytes: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    """New completion text. `text` may be empty while bytes of a UTF-8 character are still pending."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    completion_tokens: int = 0  # local engines: tokens generated so far, this delta's included


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # completion tokens spent inside the reasoning block (markers included)
    drafted_tokens: int = 0  # speculative decoding: tokens guessed and checked
    accepted_tokens: int = 0  # of those, the ones the model confirmed (each one a decode step saved)
    queued_seconds: float = 0.0  # waiting in the engine's queue for a sequence slot (tracing's time in queue)


@dataclass(frozen=True)
class GenerationFinished:
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None  # the stop string that ended the answer, if one did


GenerationChunk = TokenDelta | GenerationFinished

# Where a generation that ends before its GenerationFinished (the client left) reports what it used: the prompt it
# took and the tokens it sent, so the request log and the metrics count them. The HTTP layer sets one per request.
unfinished_usage: ContextVar[Callable[[Usage], None] | None] = ContextVar("unfinished_usage", default=None)


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine honours, so the server can refuse a field instead of silently dropping it."""

    streaming: bool = True
    logprobs: bool = True
    max_top_logprobs: int = 20
    logit_bias: bool = True
    seed: bool = True
    tools: bool = False
    parallel_tool_calls: bool = False
    json_schema: bool = False
    grammar: bool = False
    generation: bool = True  # chat / completions / responses
    embeddings: bool = False  # /v1/embeddings
    rerank: bool = False  # /v1/rerank natively (a cross-encoder or a GGUF with rank pooling)
    vision: bool = False  # image content parts (a GGUF model with its projector, mmproj)
    audio: bool = False  # input_audio content parts
    # How a new prompt reuses what a sequence already evaluated: "kv" (any shared prefix), "checkpoints"
    # (recurrent state: back to the nearest checkpoint), "none"
    prefix_reuse: str = "none"
    speculation: str = "off"  # speculative decoding: "ngram", "draft", or "off" (with the reason where forced)


# What the local generative engines (llama.cpp, transformers) both honour.
GENERATIVE_CAPABILITIES = EngineCapabilities(
    streaming=True, logprobs=True, max_top_logprobs=20, tools=True, parallel_tool_calls=True, json_schema=True,
    grammar=True,
)


@dataclass(frozen=True)
class RelayedWhole:
    """A relayed request's whole answer (remote engines)."""

    status_code: int
    body: object  # the upstream's JSON, `model` renamed to ours


@dataclass(frozen=True)
class RelayedStream:
    """A relayed request's stream: SSE bytes cut at line ends, the first already arrived. Raises `UpstreamError`
    if the upstream breaks off; closing it cancels the upstream request."""

    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class Ranking:
    """Relevance of each document to a query, in the documents' order, and the tokens read."""

    scores: list[float]
    prompt_tokens: int
    raw_scores: list[float] | None = None  # the model's logits, where scores are their probabilities


@dataclass(frozen=True)
class WarmedPrompt:
    """What pre-warming a prompt into the cache achieved."""

    prompt_tokens: int  # tokens of the whole prompt, as a chat request with these messages would count them
    cached_tokens: int  # tokens now cached (in memory and on disk) for requests continuing this conversation
    reused_tokens: int  # of those, how many were already cached before


class Engine(ABC):
    """One loaded model. `generate` may be called concurrently; the engine schedules the work."""

    engine_kind: str = "base"
    capabilities: EngineCapabilities = EngineCapabilities()
    relays_requests: bool = False  # True: the HTTP layer forwards requests whole (remote upstreams)

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Most tokens (prompt + completion) one sequence may hold."""

    @property
    @abstractmethod
    def chat_template(self) -> ChatTemplateInfo:
        """The template this model's chat requests are rendered with."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` becomes as a prompt (special tokens parsed, BOS handled as in generation)."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Yield deltas then exactly one `GenerationFinished`.

        Raises typed errors (`ContextLengthExceeded`, `EngineBusy`...) before the first chunk when the request
        cannot start. Closing the iterator early cancels the generation and frees its resources.
        """

    async def embed(self, inputs: list[str] | list[list[int]]):
        """Embedding vectors for the inputs (an object with `vectors` and `prompt_tokens`)."""
        raise NotSupported(
            f"This {self.engine_kind} model generates text and does not serve embeddings; use an embedding model "
            "(or mark this one `embedding: true` in models.yaml to serve it as one)."
        )

    async def rerank(self, query: str, documents: list[str]) -> Ranking:
        """One relevance score per document for `query`, in order (engines with `capabilities.rerank`)."""
        raise NotSupported(f"This {self.engine_kind} model does not rerank.")

    async def relay(
        self, path: str, body: dict, client_gone: Callable[[], Awaitable], headers: dict[str, str] | None = None
    ) -> RelayedWhole | RelayedStream | None:
        """Forward a request as the client sent it to the API `path` of another server (`relays_requests`
        engines). None: `client_gone` finished before the answer did."""
        raise NotSupported(f"The {self.engine_kind} engine generates locally; it relays nothing.")

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as a prompt (special-token text parsed, BOS as the model wants)."""
        raise NotSupported(f"The {self.engine_kind} engine does not tokenize here.")

    def detokenize(self, tokens: list[int]) -> str:
        raise NotSupported(f"The {self.engine_kind} engine does not detokenize here.")

    def infill_prompt(self, prefix: str, suffix: str) -> list[int] | None:
        """Prompt tokens asking the model to fill in between `prefix` and `suffix` (prefix-suffix-middle), or
        None when the model has no fill-in-the-middle tokens."""
        return None

    def weight_placement(self) -> dict | None:
        """Where the weights went (llama.cpp: the `--repack` choice and bytes per buffer type), for the model card."""
        return None

    def failure(self) -> str | None:
        """Why this engine can serve no more (its worker process died), or None while it is fine. The registry
        then replaces it with a fresh one."""
        return None

    def worker_pid(self) -> int | None:
        """The process the model runs in, where that is not the server's own (engine workers)."""
        return None

    def active_sequences(self) -> int:
        """Sequences generating right now (for status pages)."""
        return 0

    def queued_requests(self) -> int:
        """Requests waiting for a free sequence slot."""
        return 0

    def kv_cache_usage(self) -> KvCacheUsage | None:
        """How full the KV cache is (routers' KV-utilisation gauge); None where the engine cannot say."""
        return None

    def kv_events(self) -> list[dict]:
        """KV-cache events (vLLM's format, as dicts) since the last call, for `--kv-events`; none by default."""
        return []

    def steps_taken(self) -> int | None:
        """A count that grows with every step of work (a batch decoded); None where the engine has none. An engine
        worker's watchdog reads it: work waiting while it stands still means the engine is stuck."""
        return None

    async def warm_prompt(self, prompt: str, conversation: str, adapters: AdapterSet | None = None) -> WarmedPrompt:
        """Evaluate a chat prompt into the prompt cache (memory and disk) without generating.

        `prompt` is what a chat request would evaluate; `conversation` is the same messages rendered without
        the generation prompt. What both share is what later requests continuing the conversation reuse."""
        raise NotSupported(f"The {self.engine_kind} engine has no prompt cache to warm.")

    def cache_summary(self, adapters: AdapterSet | None = None) -> dict | None:
        """The prompt cache's contents and counters (of the states computed with `adapters`), or None."""
        return None

    def attach_adapters(self, model_id: str, adapters: tuple) -> AdapterSet:
        """Load LoRA adapters (catalog `LoraAdapter`s) for the adapter entry `model_id` (blocking: a worker thread
        calls it). Requests carrying the returned set run with them; the base's own requests run without."""
        raise NotSupported(f"The {self.engine_kind} engine does not apply LoRA adapters.")

    def detach_adapters(self, adapters: AdapterSet) -> None:
        """Free what `attach_adapters` loaded, once no request uses it (blocking)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Finish the work in flight, then release the model's memory."""
