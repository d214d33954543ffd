"""Serves one chat completion request: lease the model, run its choices, answer whole or as SSE."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from api.chat_request import check_request_limits, log_unknown_fields, prepare_chat
from api.chat_response import ChoiceAccumulator, ChoiceOutput, ChunkBuilder, CompletionIdentity, whole_completion
from api.choice_streams import consume_unless_disconnected, merge_choices, with_deadline
from api.errors import error_body
from api.observability import note_model, observe
from api.protocol import ChatCompletionRequest
from api.proxy import client_body, relay
from backends.base import GenerationChunk, GenerationFinished, GenerationRequest, TokenDelta
from backends.registry import LoadedModel, ModelRegistry
from errors import EngineFailure, ServerError
from settings import Settings

logger = logging.getLogger(__name__)

ChoiceChunks = AsyncIterator[tuple[int, GenerationChunk]]


async def handle_chat_completion(body: ChatCompletionRequest, request: Request, registry: ModelRegistry) -> Response:
    log_unknown_fields(body)
    settings = request.app.state.settings
    check_request_limits(body, settings.max_tokens_limit, settings.max_messages)
    resources = AsyncExitStack()  # holds the model lease; a stream takes it over and releases it when it ends
    handed_to_stream = False
    try:
        model = await resources.enter_async_context(registry.lease(body.model))
        if model.engine.relays_requests:  # a remote model: its upstream gets the request as the client sent it
            note_model(model.model_id, model.engine.engine_kind)
            return await relay(model.engine, model.model_id, "chat/completions", client_body(body), request)
        defaults = registry.generation_defaults(model.model_id)
        prepared = prepare_chat(body, model.renderer, model.engine.capabilities, defaults)
        identity = CompletionIdentity(model=model.model_id)
        outputs = [ChoiceOutput(prepared.tool_plan, prepared.tool_call_format) for _ in prepared.requests]
        chunks = generation_chunks(model, prepared.requests, settings)
        if body.stream:
            response = await _start_stream(body, identity, outputs, chunks, resources)
            handed_to_stream = True
            return response
        return await _whole_response(body, identity, outputs, chunks, request)
    finally:
        if not handed_to_stream:
            await resources.aclose()


def generation_chunks(model: LoadedModel, requests: list[GenerationRequest], settings: Settings) -> ChoiceChunks:
    """The choices' chunks, merged, observed for metrics and bounded by `--request-timeout`."""
    chunks = observe(merge_choices([model.engine.generate(r) for r in requests]), model.model_id, model.engine.engine_kind)
    return with_deadline(chunks, settings.request_timeout) if settings.request_timeout else chunks


async def _whole_response(
    body: ChatCompletionRequest,
    identity: CompletionIdentity,
    outputs: list[ChoiceOutput],
    chunks: ChoiceChunks,
    request: Request,
) -> Response:
    choices = [ChoiceAccumulator(output) for output in outputs]
    if not await consume_unless_disconnected(chunks, lambda item: choices[item[0]].add(item[1]), request.receive):
        logger.info("Client disconnected; generation %s cancelled", identity.id)
        return Response(status_code=499)
    completion = whole_completion(identity, choices, want_logprobs=bool(body.logprobs))
    return JSONResponse(completion.model_dump())


async def _start_stream(
    body: ChatCompletionRequest,
    identity: CompletionIdentity,
    outputs: list[ChoiceOutput],
    chunks: ChoiceChunks,
    resources: AsyncExitStack,
) -> Response:
    # Wait for the first token before sending headers, so a request that cannot start is a real HTTP error.
    first = await anext(chunks)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    builder = ChunkBuilder(identity, include_usage=include_usage, want_logprobs=bool(body.logprobs))
    events = _sse_events(builder, outputs, first, chunks, resources)
    return EventSourceResponse(events, sep="\n", ping=15)


async def _sse_events(
    builder: ChunkBuilder,
    outputs: list[ChoiceOutput],
    first: tuple[int, GenerationChunk],
    chunks: ChoiceChunks,
    resources: AsyncExitStack,
) -> AsyncIterator[dict]:
    usages = {}
    try:
        for index in range(len(outputs)):
            yield _event(builder.role(index))
        pending: tuple[int, GenerationChunk] | None = first
        while pending is not None:
            index, chunk = pending
            output = outputs[index]
            if isinstance(chunk, TokenDelta):
                for payload in builder.events(index, output.read(chunk.text), chunk.logprobs, output.plan.legacy):
                    yield _event(payload)
            elif isinstance(chunk, GenerationFinished):
                usages[index] = chunk.usage
                for payload in builder.events(index, output.finish(), (), output.plan.legacy):
                    yield _event(payload)
                yield _event(builder.finish(index, output.finish_reason(chunk.finish_reason)))
            pending = await anext(chunks, None)
        if builder.include_usage:
            yield _event(builder.usage([usages[i] for i in sorted(usages)]))
        yield {"data": "[DONE]"}
    except ServerError as exc:
        yield _event(error_body(exc))
    except Exception:
        logger.exception("Stream %s failed", builder.identity.id)
        yield _event(error_body(EngineFailure("The engine failed while generating this response.")))
    finally:
        await chunks.aclose()
        await resources.aclose()


def _event(payload: dict) -> dict:
    return {"data": json.dumps(payload, ensure_ascii=False, separators=(",", ":"))}
