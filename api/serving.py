"""One serving path for every endpoint: lease the model -> relay it (remote) or run it here -> answer whole or
as SSE -> give the lease back (a stream takes it over and gives it back when it ends).

An endpoint supplies what differs: how a local request starts (`start_local`: the engine chunks and an
`AnswerWriter` that turns them into its API's answer) and, for remote models, the body and upstream path to relay.
Errors before the first chunk are real HTTP errors (the stream waits for its first chunk before sending
headers); after it, the writer's error events end the stream.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.choice_streams import consume_unless_disconnected, merge_choices, wait_for_disconnect, with_deadline
from api.error_responses import error_body
from api.observability import note_model, note_upstream_error, observe
from api.sse import event_stream, sse_bytes, sse_event
from backends.base import GenerationChunk, GenerationRequest, RelayedStream
from backends.registry import LoadedModel, ModelRegistry
from errors import EngineFailure, ServerError, UpstreamError
from settings import Settings

logger = logging.getLogger(__name__)

ChoiceChunks = AsyncIterator[tuple[int, GenerationChunk]]
Payloads = Iterable[dict | str]


class AnswerWriter(ABC):
    """Turns one request's engine chunks into its API's answer: SSE payloads as they come, or one object."""

    named_events = False  # True: each SSE event is named after its payload's `type` (Responses, Anthropic)

    def start(self) -> Payloads:
        return ()

    @abstractmethod
    def add(self, index: int, chunk: GenerationChunk) -> Payloads:
        """Take the next chunk of choice `index`; the payloads to stream now (ignored for a whole answer)."""

    def finish(self) -> Payloads:
        return ()

    @abstractmethod
    def fail(self, error: ServerError) -> Payloads:
        """The payloads that end a stream broken by `error`."""

    @abstractmethod
    def whole(self) -> object:
        """The whole answer (JSON-able), once every chunk was added."""


@dataclass
class LocalRun:
    writer: AnswerWriter
    chunks: ChoiceChunks
    stream: bool


LocalStart = Callable[[LoadedModel], Awaitable[LocalRun | Response]]


def generation_chunks(model: LoadedModel, requests: list[GenerationRequest], settings: Settings) -> ChoiceChunks:
    """The choices' chunks, merged, observed for metrics and bounded by `--request-timeout`."""
    chunks = observe(merge_choices([model.engine.generate(r) for r in requests]), model.model_id,
                     model.engine.engine_kind)
    return with_deadline(chunks, settings.request_timeout) if settings.request_timeout else chunks


async def serve(
    request: Request, registry: ModelRegistry, model_name: str | None, *, start_local: LocalStart,
    relay_path: str, relay_body: Callable[[], dict],
) -> Response:
    resources = AsyncExitStack()  # holds the model lease
    handed_to_stream = False
    try:
        model = await resources.enter_async_context(registry.lease(model_name))
        if model.engine.relays_requests:
            note_model(model.model_id, model.engine.engine_kind)
            response = await _relay(model, relay_path, relay_body(), request)
        else:
            response = await _run_locally(await start_local(model), request, resources)
        handed_to_stream = isinstance(response, StreamingResponse)
        return response
    finally:
        if not handed_to_stream:
            await resources.aclose()


async def _run_locally(run: LocalRun | Response, request: Request, resources: AsyncExitStack) -> Response:
    if isinstance(run, Response):
        return run
    if run.stream:
        first = await anext(run.chunks)  # a request that cannot start is a real HTTP error, not a broken stream
        return event_stream(_local_events(run, first, resources))
    if not await consume_unless_disconnected(run.chunks, lambda item: run.writer.add(*item), request.receive):
        logger.info("Client disconnected; its generation was cancelled")
        return Response(status_code=499)
    return JSONResponse(run.writer.whole())


async def _local_events(run: LocalRun, first: tuple[int, GenerationChunk], resources: AsyncExitStack):
    writer = run.writer

    def events(payloads: Payloads):
        return [sse_event(p, p["type"] if writer.named_events and isinstance(p, dict) else None) for p in payloads]

    try:
        for event in events(writer.start()):
            yield event
        pending: tuple[int, GenerationChunk] | None = first
        while pending is not None:
            for event in events(writer.add(*pending)):
                yield event
            pending = await anext(run.chunks, None)
        for event in events(writer.finish()):
            yield event
    except ServerError as exc:
        for event in events(writer.fail(exc)):
            yield event
    except Exception:
        logger.exception("A stream failed")
        for event in events(writer.fail(EngineFailure("The engine failed while generating this response."))):
            yield event
    finally:
        await run.chunks.aclose()
        await resources.aclose()


async def _relay(model: LoadedModel, path: str, body: dict, request: Request) -> Response:
    try:
        answer = await model.engine.relay(path, body, lambda: wait_for_disconnect(request.receive))
    except UpstreamError as exc:
        if exc.status_code >= 500:
            note_upstream_error(exc.upstream, exc.code)
        raise
    if answer is None:
        return Response(status_code=499)  # the client left; the upstream request was dropped
    if isinstance(answer, RelayedStream):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_relayed_bytes(answer), media_type="text/event-stream", headers=headers)
    return JSONResponse(answer.body, status_code=answer.status_code)


async def _relayed_bytes(answer: RelayedStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.chunks:
            yield chunk
    except UpstreamError as exc:  # the upstream broke off: one error event, then the end
        note_upstream_error(exc.upstream, exc.code)
        logger.warning("%s", exc.message)
        yield sse_bytes(error_body(exc))
    finally:
        await answer.chunks.aclose()
