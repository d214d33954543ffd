"""Pieces every local engine shares: request limits checked before any work, the bridge that relays what a
worker thread emits for one request to the asyncio side, and the base of the engines whose scheduler runs on a
worker thread (llama.cpp, transformers)."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable

from backends.base import Engine, GenerationChunk, GenerationFinished, GenerationRequest, TokenDelta, Usage, unfinished_usage
from errors import ContextLengthExceeded, InvalidRequest

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
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[GenerationChunk | Exception] = asyncio.Queue()

    def emit(item: GenerationChunk | Exception) -> None:
        try:
            loop.call_soon_threadsafe(chunks.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
            pass

    job.emit = emit
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
    """An engine whose `scheduler` (submit / cancel / active_sequences / queued / shutdown) runs requests on a
    worker thread."""

    scheduler = None

    def run_job(self, job, prompt_tokens: int) -> AsyncIterator[GenerationChunk]:
        """Hand `job` (of a prompt of `prompt_tokens` tokens) to the worker thread; its chunks as they come
        (leaving early cancels it)."""
        return relay_from_thread(job, prompt_tokens, self.scheduler.submit, self.scheduler.cancel)

    def active_sequences(self) -> int:
        return self.scheduler.active_sequences

    def queued_requests(self) -> int:
        return self.scheduler.queued

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_blocking)

    @abstractmethod
    def close_blocking(self) -> None:
        """Stop the worker thread (work already accepted finishes first), then free the model's memory."""
