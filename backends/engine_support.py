"""Pieces every local engine shares: request limits checked before any work, the bridge that relays what a
worker thread emits for one request to the asyncio side, and the base of the engines whose scheduler runs on a
worker thread (llama.cpp, transformers)."""

from __future__ import annotations

import asyncio
import math
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from backends.base import (
    ChatTemplateInfo,
    Engine,
    GenerationChunk,
    GenerationFinished,
    GenerationRequest,
    GrammarSpec,
    TokenDelta,
    Usage,
    unfinished_usage,
)
from backends.reasoning_state import CLOSING_SUFFIX
from backends.step_outbox import LoopEmit
from errors import ContextLengthExceeded, InvalidRequest
from settings import Settings

Emit = Callable[[GenerationChunk | Exception], None]


def completion_budget(request: GenerationRequest, n_prompt: int, context_length: int, default_max_tokens: int) -> int:
    """Check the request fits one sequence's context; return the completion token budget."""
    room = context_length - n_prompt
    if room <= 0:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens. However, your messages "
            f"resulted in {n_prompt} tokens. Please reduce the length of the messages.",
            param="messages",
        )
    if request.max_tokens is None:
        return min(default_max_tokens, room)
    if request.max_tokens > room and request.clamp_to_context:
        return room
    if request.max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens. However, you requested "
            f"{n_prompt + request.max_tokens} tokens ({n_prompt} in the messages, {request.max_tokens} in "
            "the completion). Please reduce the length of the messages or completion.",
            param="max_tokens",
        )
    return request.max_tokens


# A model's own path to an answer takes more tokens than the shortest answer's text tokenized whole (it writes
# `{"` `answer` `":` where the whole text is `{"answer":`): measured on SmolLM2 with a two-key JSON schema, the
# shortest path took up to 1.9x (nearly a token per character where the grammar rules out its merged tokens).
# Budgets are checked against the shortest form times this margin.
ANSWER_MARGIN = 2.0
TIGHT_BUDGET = 2  # below this many times that minimum, the grammar leaves out optional whitespace


@dataclass(frozen=True)
class AnswerFloor:
    """What a grammar-constrained answer takes at least, in tokens (a thinking block's markers included)."""

    shortest: int  # its shortest valid text, tokenized whole: where budget closing must have begun
    needed: int  # what a budget must hold for the model's own path to a valid answer (ANSWER_MARGIN)


def fitted_grammar(request: GenerationRequest, max_tokens: int,
                   tokens_of: Callable[[str], int]) -> tuple[GrammarSpec | None, AnswerFloor | None]:
    """The grammar to decode the answer with, and its floor (None: no grammar constrains the answer from its
    start). See `answer_floor`; a budget with little room beyond the floor gets the grammar without optional
    whitespace, so the answer can still close within it."""
    floor = answer_floor(request, max_tokens, tokens_of)
    grammar = request.grammar
    if floor is not None and max_tokens < TIGHT_BUDGET * floor.needed:
        grammar = grammar.without_optional_space()
    return grammar, floor


def answer_floor(request: GenerationRequest, max_tokens: int, tokens_of: Callable[[str], int]) -> AnswerFloor | None:
    """The floor of the answer the request's grammar constrains from its start (None: there is none, or it cannot
    be told). A `max_tokens` below `needed` is a 400: the answer could end as JSON that never completes."""
    grammar = request.grammar
    if grammar is None or grammar.lazy_triggers or not grammar.shortest:
        return None
    shortest = tokens_of(grammar.shortest)
    if request.reasoning is not None:  # the model may think first: the block's markers are written too
        markers = request.reasoning.close + CLOSING_SUFFIX
        shortest += tokens_of(markers if request.reasoning.starts_inside else request.reasoning.open + markers)
    needed = math.ceil(ANSWER_MARGIN * shortest)
    if max_tokens < needed:
        raise InvalidRequest(
            f"The token limit is {max_tokens}, but a valid answer to this request's tools or response format needs "
            f"at least {needed} tokens with this model (its shortest form takes {shortest}); raise the limit to at "
            f"least {needed}.", param="max_tokens")
    return AnswerFloor(shortest, needed)


def check_token_ids(tokens: list[int], n_vocab: int, param: str) -> None:
    if any(not 0 <= token < n_vocab for token in tokens):
        raise InvalidRequest(f"Token ids must be in 0..{n_vocab - 1} for this model.", param=param)


def check_logit_bias(request: GenerationRequest, n_vocab: int) -> None:
    for token in request.sampling.logit_bias:
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias token id {token} is outside this model's vocabulary (0..{n_vocab - 1}).",
                param="logit_bias",
            )


async def relay_from_thread(
    job, prompt_tokens: int, submit: Callable[[object], None], cancel: Callable[[object], bool]
) -> AsyncIterator[GenerationChunk]:
    """Give `job` an `emit` for its worker thread, `submit` it, and yield its chunks until `GenerationFinished`.

    Leaving early (client gone, error) cancels the job, so the worker stops at its next token (or never takes it
    from the queue), and reports the usage so far (`unfinished_usage`)."""
    chunks: asyncio.Queue[GenerationChunk | Exception] = asyncio.Queue()
    job.emit = LoopEmit(asyncio.get_running_loop(), chunks)  # (a scheduler may hold its chunks per step)
    submit(job)
    sent, finished = 0, False
    try:
        while True:
            item = await chunks.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, TokenDelta):
                sent = item.completion_tokens
            finished = isinstance(item, GenerationFinished)
            yield item
            if finished:
                return
    finally:
        never_started = cancel(job)
        if not finished and (report := unfinished_usage.get()) is not None:
            report(Usage(prompt_tokens=0 if never_started else prompt_tokens, completion_tokens=sent))


class WorkerThreadEngine(Engine):
    """A generative engine whose `scheduler` (submit / cancel / active_sequences / queued / shutdown) runs requests
    on a worker thread."""

    scheduler = None

    def __init__(self, settings: Settings, context_length: int) -> None:
        """Called by each engine's constructor once its model is open (the template is read from the model):
        the limits every request is checked against and the template every chat is rendered with."""
        self._context_length = context_length  # tokens one sequence may hold, prompt and completion
        self._default_max_tokens = settings.default_max_tokens
        self._template = self._load_template(settings)

    @abstractmethod
    def _load_template(self, settings: Settings) -> ChatTemplateInfo:
        """The chat template: --chat-template, a file beside the model, the model's own, or one picked by name."""

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def chat_template(self) -> ChatTemplateInfo:
        return self._template

    def run_job(self, job, prompt_tokens: int) -> AsyncIterator[GenerationChunk]:
        """Hand `job` (of a prompt of `prompt_tokens` tokens) to the worker thread; its chunks as they come
        (leaving early cancels it)."""
        return relay_from_thread(job, prompt_tokens, self.scheduler.submit, self.scheduler.cancel)

    def active_sequences(self) -> int:
        return self.scheduler.active_sequences

    def queued_requests(self) -> int:
        return self.scheduler.queued

    def steps_taken(self) -> int | None:
        return self.scheduler.steps

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_blocking)

    @abstractmethod
    def close_blocking(self) -> None:
        """Stop the worker thread (work already accepted finishes first), then free the model's memory."""
