"""`POST /v1/responses` (and bare): the Responses API, stateless, on local engines; relayed for remote models.

A local request becomes a chat request (`api/responses_request.py`) and runs through the same engines; the
answer is written by `api/responses_output.py`. The body is validated here, not by FastAPI, so a remote
upstream gets exactly what the client sent, including item types only it understands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from api.chat_handler import ChoiceChunks, generation_chunks
from api.chat_request import prepare_chat
from api.chat_response import ChoiceOutput
from api.choice_streams import consume_unless_disconnected
from api.deps import RegistryDep
from api.observability import note_model
from api.protocol import ErrorResponse
from api.proxy import relay
from api.responses_output import ResponseWriter
from api.responses_protocol import ResponseObject, ResponsesRequest
from api.responses_request import check_response_limits, responses_param_names, to_chat_request, wants_logprobs
from backends.base import GenerationChunk
from backends.registry import LoadedModel, ModelRegistry
from errors import EngineFailure, InvalidRequest, ResponseNotFound, ServerError
from settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["responses"])

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 500, 503)}


@router.post("/v1/responses", response_model=ResponseObject, responses=_ERRORS)
@router.post("/responses", response_model=ResponseObject, responses=_ERRORS, include_in_schema=False)
async def create_response(request: Request, registry: RegistryDep, body: Any = Body(...)) -> Response:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    parsed = ResponsesRequest.model_validate(body)  # a ValidationError becomes the app's usual 400
    if parsed.model_extra:
        logger.debug("Ignoring fields this server does not use: %s", sorted(parsed.model_extra))
    settings = request.app.state.settings
    check_response_limits(parsed, settings.max_tokens_limit, settings.max_messages)
    resources = AsyncExitStack()  # holds the model lease; a stream takes it over and releases it when it ends
    handed_to_stream = False
    try:
        model = await resources.enter_async_context(registry.lease(parsed.model))
        if model.engine.relays_requests:
            note_model(model.model_id, model.engine.engine_kind)
            return await relay(model.engine, model.model_id, "responses", body, request)
        writer, chunks = _start_generation(parsed, model, registry, settings)
        if parsed.stream:
            response = await _start_stream(writer, chunks, resources)
            handed_to_stream = True
            return response
        return await _whole_response(writer, chunks, request)
    finally:
        if not handed_to_stream:
            await resources.aclose()


@router.get("/v1/responses/{response_id}", responses={404: {"model": ErrorResponse}})
@router.delete("/v1/responses/{response_id}", responses={404: {"model": ErrorResponse}})
@router.get("/v1/responses/{response_id}/input_items", responses={404: {"model": ErrorResponse}})
@router.post("/v1/responses/{response_id}/cancel", responses={404: {"model": ErrorResponse}})
async def stored_response(response_id: str) -> Response:
    """Clients that retrieve, delete or cancel a response get a clear 404, not a bare 'Not Found'."""
    raise ResponseNotFound(response_id)


def _start_generation(
    body: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings
) -> tuple[ResponseWriter, ChoiceChunks]:
    with responses_param_names():
        chat = to_chat_request(body)
        prepared = prepare_chat(chat, model.renderer, model.engine.capabilities,
                                registry.generation_defaults(model.model_id))
    text_format = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format \
        else {"type": "text"}
    shell = ResponseObject(
        model=model.model_id, instructions=body.instructions, max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {}, parallel_tool_calls=body.parallel_tool_calls is not False,
        temperature=body.temperature, top_p=body.top_p, text={"format": text_format},
        tool_choice=body.tool_choice.model_dump(exclude_none=True) if hasattr(body.tool_choice, "model_dump")
        else body.tool_choice or "auto",
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
        top_logprobs=body.top_logprobs, user=body.user,
    )
    writer = ResponseWriter(shell, ChoiceOutput(prepared.tool_plan, prepared.tool_call_format), wants_logprobs(body))
    chunks = generation_chunks(model, prepared.requests, settings)
    return writer, chunks


async def _whole_response(writer: ResponseWriter, chunks: ChoiceChunks, request: Request) -> Response:
    if not await consume_unless_disconnected(chunks, lambda item: writer.add(item[1]), request.receive):
        logger.info("Client disconnected; response %s cancelled", writer.response.id)
        return Response(status_code=499)
    return JSONResponse(writer.response.model_dump(mode="json"))


async def _start_stream(writer: ResponseWriter, chunks: ChoiceChunks, resources: AsyncExitStack) -> Response:
    # Wait for the first token before sending headers, so a request that cannot start is a real HTTP error.
    first = await anext(chunks)
    return EventSourceResponse(_sse_events(writer, first, chunks, resources), sep="\n", ping=15)


async def _sse_events(
    writer: ResponseWriter, first: tuple[int, GenerationChunk], chunks: ChoiceChunks, resources: AsyncExitStack
) -> AsyncIterator[dict]:
    try:
        for event in writer.start():
            yield _sse(event)
        pending = first
        while pending is not None:
            for event in writer.add(pending[1]):
                yield _sse(event)
            pending = await anext(chunks, None)
    except ServerError as exc:
        for event in writer.fail(exc):
            yield _sse(event)
    except Exception:
        logger.exception("Response stream %s failed", writer.response.id)
        for event in writer.fail(EngineFailure("The engine failed while generating this response.")):
            yield _sse(event)
    finally:
        await chunks.aclose()
        await resources.aclose()


def _sse(event: dict) -> dict:
    """Responses streams name each event (`event: response.output_text.delta`), unlike chat streams."""
    return {"event": event["type"], "data": json.dumps(event, ensure_ascii=False, separators=(",", ":"))}
