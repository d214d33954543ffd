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
from dataclasses import dataclass, replace
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from api import tracing
from api.choice_streams import (
    consume_unless_disconnected,
    first_unless_disconnected,
    merge_choices,
    wait_for_disconnect,
    with_deadline,
)
from api.error_responses import error_body
from api.observability import note_model, note_upstream_error, observe
from api.pipeline.affinity import SESSION_HEADER, request_affinity
from api.sse import event_stream, sse_bytes, sse_event
from backends.base import GenerationChunk, GenerationFinished, GenerationRequest, RelayedStream, RelayedWhole
from backends.keep_alive import parse_duration
from backends.registry import KEEP, LoadedModel, ModelRegistry
from errors import EngineFailure, InvalidRequest, ServerError, UpstreamError
from settings import Settings
from tenants.keys import Tenant
from tenants.quotas import QuotaBook, Ticket

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

    async def settled(self) -> None:
        """Wait, once a choice's GenerationFinished is added, for what must be done before the client sees its
        events (a stored response's write: the client may read it back at once, from another instance too)."""

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


@dataclass
class LocalWhole:
    """An answer computed at once (embeddings), with the prompt tokens it used."""

    body: object
    prompt_tokens: int


@dataclass
class LocalBackground:
    """A run answered at once with `body` while it goes on generating in the background (Responses'
    `background: true`): `launch` is handed the generation, which holds the lease and the ticket until it ends."""

    body: object
    writer: AnswerWriter
    chunks: ChoiceChunks
    launch: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]]


LocalStart = Callable[[LoadedModel], Awaitable[LocalRun | LocalWhole | LocalBackground]]


def generation_chunks(
    model: LoadedModel, requests: list[GenerationRequest], settings: Settings, tenant: Tenant, body: BaseModel
) -> ChoiceChunks:
    """The choices' chunks, merged, observed for metrics and bounded by `--request-timeout`. Each generation is
    labelled with its tenant, so the engines' queues can take turns between tenants, and carries the request's
    engine-level extensions found in `body` (any API's)."""
    speculative, affinity = wants_speculation(body), request_affinity(body)
    streams = [model.engine.generate(replace(r, tenant=tenant.label, speculative=speculative, affinity=affinity))
               for r in requests]
    chunks = observe(merge_choices(streams), model.model_id, model.engine.engine_kind)
    return with_deadline(chunks, settings.request_timeout) if settings.request_timeout else chunks


def wants_speculation(body: BaseModel) -> bool:
    """Our extension `"speculative": false`: this request decodes one token per step (the server's speculative
    decoding, `--spec`, is exact, so this only trades speed for a steadier pace)."""
    value = (body.model_extra or {}).get("speculative", True)
    if not isinstance(value, bool):
        raise InvalidRequest("'speculative' must be true or false.", param="speculative")
    return value


def requested_keep_alive(body: dict) -> float | None | object:
    """The request's `keep_alive` (Ollama's extension: how long the model stays loaded after it), in seconds."""
    return parse_duration(body["keep_alive"]) if isinstance(body, dict) and "keep_alive" in body else KEEP


def requested_tokens(body: dict, default_max_tokens: int) -> int:
    """What a request may generate at most, n x max_tokens, for the per-key cap (any API's field names)."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    return max(1, n) * (max_tokens if isinstance(max_tokens, int) else default_max_tokens)


class RelayReader(Protocol):
    """Reads a relayed answer back as engine chunks for `writer` (an endpoint whose API the upstream lacks)."""

    writer: AnswerWriter
    stream: bool

    def chunks(self, answer: RelayedWhole | RelayedStream) -> ChoiceChunks: ...


async def serve(
    request: Request, registry: ModelRegistry, model_name: str | None, *, tenant: Tenant, request_tokens: int,
    start_local: LocalStart, relay_path: str, relay_body: Callable[[], dict],
    relay_answer: Callable[[LoadedModel], RelayReader] | None = None,
) -> Response:
    """`relay_answer`: the upstream's answer is read back and written by this endpoint's writer (Messages over
    an upstream's chat completions) instead of being passed through as it came."""
    ticket, resources = _admitted(request.app.state.quotas, tenant, request_tokens)
    handed_to_stream = False
    try:
        model = await _leased(resources, registry, model_name, tenant, requested_keep_alive(relay_body()))
        if model.engine.relays_requests and relay_answer is not None:
            note_model(model.model_id, model.engine.engine_kind)
            response = await _relay_through_writer(model, relay_path, relay_body(), relay_answer(model), request,
                                                   resources, ticket)
        elif model.engine.relays_requests:
            note_model(model.model_id, model.engine.engine_kind)
            response = await _relay(model, relay_path, relay_body(), request, ticket, resources)
        else:
            response = await _run_locally(await start_local(model), request, resources, ticket)
        response.headers.update(ticket.headers())
        # A stream holds the lease and the ticket until it ends (its generator closes `resources`).
        handed_to_stream = isinstance(response, (StreamingResponse, EventSourceResponse))
        return response
    except Exception:
        ticket.failed()
        raise
    finally:
        if not handed_to_stream:
            await resources.aclose()


def _admitted(quotas: QuotaBook, tenant: Tenant, request_tokens: int) -> tuple[Ticket, AsyncExitStack]:
    """The key's quota ticket (a 429 before any work), and the stack that holds it and, next, the model lease."""
    with tracing.span("admission", **{"llm_server.tenant": tenant.label}):
        ticket = quotas.admit(tenant, request_tokens)
    resources = AsyncExitStack()
    resources.callback(ticket.release)
    return ticket, resources


async def _leased(resources: AsyncExitStack, registry: ModelRegistry, model_name: str | None, tenant: Tenant,
                  keep_alive: float | None | object) -> LoadedModel:
    with tracing.span("model lease", **{"gen_ai.request.model": model_name or ""}):  # (a load inside it)
        return await resources.enter_async_context(registry.lease(model_name, tenant.may_use, keep_alive))


async def _run_locally(run: LocalRun | LocalWhole | LocalBackground, request: Request, resources: AsyncExitStack,
                       ticket: Ticket) -> Response:
    if isinstance(run, LocalWhole):
        ticket.charge(run.prompt_tokens, 0)
        return JSONResponse(run.body)
    if isinstance(run, LocalBackground):
        await run.launch(_in_background(run, resources.pop_all(), ticket))  # the lease and the ticket go with it
        return JSONResponse(run.body)
    run.chunks = _charged(run.chunks, ticket)
    if run.stream:
        # A request that cannot start is a real HTTP error, not a broken stream; one whose client leaves while it
        # waits for a slot is dropped from the queue.
        first = await first_unless_disconnected(run.chunks, request.receive)
        if first is None:
            logger.info("Client disconnected while its request waited; it was cancelled")
            return Response(status_code=499)
        return event_stream(_local_events(run, first, resources, ticket))
    if not await consume_unless_disconnected(run.chunks, lambda item: run.writer.add(*item), request.receive):
        logger.info("Client disconnected; its generation was cancelled")
        return Response(status_code=499)
    await run.writer.settled()
    return JSONResponse(run.writer.whole())


def _in_background(run: LocalBackground, resources: AsyncExitStack,
                   ticket: Ticket) -> Callable[[], Awaitable[None]]:
    """The generation of a background run: its chunks charged and written, then the lease and ticket given back."""

    async def generate() -> None:
        async with resources:
            try:
                async for index, chunk in _charged(run.chunks, ticket):
                    run.writer.add(index, chunk)
            except BaseException:  # cancelled or failed: the key is not charged for an answer it did not get
                ticket.failed()
                raise

    return generate


async def _charged(chunks: ChoiceChunks, ticket: Ticket) -> ChoiceChunks:
    """The chunks, each finished choice's tokens charged to the key."""
    try:
        async for index, chunk in chunks:
            if isinstance(chunk, GenerationFinished):
                ticket.charge(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            yield index, chunk
    finally:
        await chunks.aclose()


async def _local_events(run: LocalRun, first: tuple[int, GenerationChunk], resources: AsyncExitStack,
                        ticket: Ticket):
    named = run.writer.named_events
    async for payload in _local_payloads(run, first, resources, ticket):
        yield sse_event(payload, payload["type"] if named and isinstance(payload, dict) else None)


async def _local_payloads(run: LocalRun, first: tuple[int, GenerationChunk], resources: AsyncExitStack,
                          ticket: Ticket) -> AsyncIterator[dict | str]:
    """A streamed run's payloads in order, from its first chunk on; a failure ends them with the writer's error
    payloads. Gives the lease and the ticket back when done (or closed: the client left)."""
    writer = run.writer
    try:
        for payload in writer.start():
            yield payload
        pending: tuple[int, GenerationChunk] | None = first
        while pending is not None:
            added = writer.add(*pending)
            if isinstance(pending[1], GenerationFinished):
                await writer.settled()
            for payload in added:
                yield payload
            pending = await anext(run.chunks, None)
        for payload in writer.finish():
            yield payload
    except ServerError as exc:
        ticket.failed()
        for payload in writer.fail(exc):
            yield payload
    except Exception:
        ticket.failed()
        logger.exception("A stream failed")
        for payload in writer.fail(EngineFailure("The engine failed while generating this response.")):
            yield payload
    finally:
        await run.chunks.aclose()
        await resources.aclose()


async def serve_payloads(registry: ModelRegistry, quotas: QuotaBook, model_name: str | None, *, tenant: Tenant,
                         request_tokens: int, keep_alive: float | None | object,
                         start_local: LocalStart) -> AsyncIterator[dict | str]:
    """The serving path for a transport other than HTTP (Responses over a WebSocket): the same admission, lease
    and local run as `serve`, streamed as the writer's payloads. Errors before the first chunk are raised here
    (the caller answers them as errors); later ones end the payloads as a stream's do."""
    ticket, resources = _admitted(quotas, tenant, request_tokens)
    try:
        model = await _leased(resources, registry, model_name, tenant, keep_alive)
        if model.engine.relays_requests:
            raise InvalidRequest("This transport serves local models; use HTTP for a remote one.", param="model")
        run = await start_local(model)
        if not isinstance(run, LocalRun):
            raise InvalidRequest("Only streamed responses are served here.")
        run.chunks = _charged(run.chunks, ticket)
        first = await anext(run.chunks)
    except BaseException:
        ticket.failed()
        await resources.aclose()
        raise
    return _local_payloads(run, first, resources, ticket)


async def _upstream_answer(model: LoadedModel, path: str, body: dict,
                           request: Request) -> RelayedWhole | RelayedStream | None:
    try:
        request_affinity(body)  # (logged; the body goes upstream as it came, and the header with it)
        given = request.headers.get(SESSION_HEADER)
        headers = {SESSION_HEADER: given} if given else {}
        return await model.engine.relay(path, body, lambda: wait_for_disconnect(request.receive),
                                        {**headers, **tracing.propagation_headers()})
    except UpstreamError as exc:
        if exc.status_code >= 500:
            note_upstream_error(exc.upstream, exc.code)
        raise


async def _relay_through_writer(model: LoadedModel, path: str, body: dict, reader: RelayReader, request: Request,
                                resources: AsyncExitStack, ticket: Ticket) -> Response:
    answer = await _upstream_answer(model, path, body, request)
    if answer is None:
        return Response(status_code=499)
    return await _run_locally(LocalRun(reader.writer, reader.chunks(answer), reader.stream), request, resources,
                              ticket)


async def _relay(model: LoadedModel, path: str, body: dict, request: Request, ticket: Ticket,
                 resources: AsyncExitStack) -> Response:
    answer = await _upstream_answer(model, path, body, request)
    if answer is None:
        return Response(status_code=499)  # the client left; the upstream request was dropped
    if isinstance(answer, RelayedStream):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_relayed_bytes(answer, ticket, resources), media_type="text/event-stream",
                                 headers=headers)
    usage = answer.body.get("usage") if isinstance(answer.body, dict) else None
    if isinstance(usage, dict):  # chat/completions name them prompt/completion, Responses input/output
        ticket.charge(int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0),
                      int(usage.get("completion_tokens") or usage.get("output_tokens") or 0))
    return JSONResponse(answer.body, status_code=answer.status_code)


async def _relayed_bytes(answer: RelayedStream, ticket: Ticket, resources: AsyncExitStack) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.chunks:
            yield chunk
    except UpstreamError as exc:  # the upstream broke off: one error event, then the end
        ticket.failed()
        note_upstream_error(exc.upstream, exc.code)
        logger.warning("%s", exc.message)
        yield sse_bytes(error_body(exc))
    finally:
        await answer.chunks.aclose()
        await resources.aclose()


def client_body(body) -> dict:
    """What the client sent, as it sent it: set fields only (defaults are the upstream's to pick), extras kept."""
    return body.model_dump(mode="json", exclude_unset=True, by_alias=True)
