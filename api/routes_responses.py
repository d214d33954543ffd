"""`POST /v1/responses` (and bare): the Responses API on local engines, stored (SQLite, api/response_store.py)
unless `store: false`, continued with `previous_response_id`; relayed as they are for remote models.

A local request becomes a chat request (`api/responses_request.py`) and runs through the same engines; the
answer is written by `api/responses_output.py`. The body is validated here, not by FastAPI, so a remote
upstream gets exactly what the client sent, including item types only it understands.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response

from api.chat_request import prepare_chat
from api.reasoning_plan import server_reasoning
from api.deps import RegistryDep, TenantDep
from api.keys import Tenant
from api.protocol import ErrorResponse
from api.responses_output import ResponseWriter
from api.responses_protocol import ResponseObject, ResponsesRequest
from api.response_store import ResponseStore
from api.responses_request import (
    check_response_limits,
    input_items,
    responses_param_names,
    to_chat_request,
    wants_logprobs,
)
from api.serving import ChoiceChunks, LocalRun, generation_chunks, requested_tokens, serve
from backends.base import GenerationFinished
from backends.registry import LoadedModel, ModelRegistry
from errors import InvalidRequest
from settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["responses"])

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 500, 503)}


@router.post("/v1/responses", response_model=ResponseObject, responses=_ERRORS)
@router.post("/responses", response_model=ResponseObject, responses=_ERRORS, include_in_schema=False)
async def create_response(request: Request, registry: RegistryDep, tenant: TenantDep, body: Any = Body(...)) -> Response:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    parsed = ResponsesRequest.model_validate(body)  # a ValidationError becomes the app's usual 400
    if parsed.model_extra:
        logger.debug("Ignoring fields this server does not use: %s", sorted(parsed.model_extra))
    settings = request.app.state.settings
    check_response_limits(parsed, settings.max_tokens_limit, settings.max_messages)

    store: ResponseStore = request.app.state.responses
    history = await store.conversation(parsed.previous_response_id, tenant.label) if parsed.previous_response_id \
        else []

    async def start_local(model: LoadedModel) -> LocalRun:
        writer, chunks = _start_generation(parsed, model, registry, settings, tenant, history)
        if parsed.store is not False:  # stored once generated, for previous_response_id and GET
            items = input_items(parsed)
            writer.on_done = lambda response: store.save_now(response, items, tenant.label)
        return LocalRun(writer, chunks, bool(parsed.stream))

    if parsed.background:
        return _start_background(request, registry, parsed, body, tenant, history)
    return await serve(request, registry, parsed.model, tenant=tenant,
                       request_tokens=requested_tokens(body, settings.default_max_tokens), start_local=start_local,
                       relay_path="responses", relay_body=lambda: body)


@router.get("/v1/responses/{response_id}", responses={404: {"model": ErrorResponse}})
@router.get("/responses/{response_id}", include_in_schema=False)
async def get_response(response_id: str, request: Request, tenant: TenantDep) -> dict:
    response, _ = await request.app.state.responses.load(response_id, tenant.label)
    return response


@router.delete("/v1/responses/{response_id}", responses={404: {"model": ErrorResponse}})
@router.delete("/responses/{response_id}", include_in_schema=False)
async def delete_response(response_id: str, request: Request, tenant: TenantDep) -> dict:
    await request.app.state.responses.delete(response_id, tenant.label)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items", responses={404: {"model": ErrorResponse}})
@router.get("/responses/{response_id}/input_items", include_in_schema=False)
async def list_input_items(response_id: str, request: Request, tenant: TenantDep, after: str | None = None,
                           limit: int = Query(20, ge=1, le=100), order: str = Query("desc", pattern="^(asc|desc)$")):
    """The input items a stored response answered (this turn's), paginated as OpenAI: `after` an item id."""
    _, items = await request.app.state.responses.load(response_id, tenant.label)
    items = items if order == "asc" else list(reversed(items))
    ids = [item.get("id") for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    page = items[start:start + limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(items)}


@router.post("/v1/responses/{response_id}/cancel", responses={404: {"model": ErrorResponse}})
@router.post("/responses/{response_id}/cancel", include_in_schema=False)
async def cancel_response(response_id: str, request: Request, tenant: TenantDep) -> dict:
    """Stop a background response (a finished one is returned as it is)."""
    response, _ = await request.app.state.responses.load(response_id, tenant.label)  # 404 if unknown or not yours
    if not response.get("background"):
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    await request.app.state.background.cancel(response_id, tenant.label)
    return (await request.app.state.responses.load(response_id, tenant.label))[0]


def _start_background(request: Request, registry: ModelRegistry, parsed: ResponsesRequest, body: dict,
                      tenant: Tenant, history: list[dict]) -> JSONResponse:
    """Queue the generation as a task and answer at once with the queued response."""
    settings = request.app.state.settings
    with responses_param_names():
        to_chat_request(parsed, history)  # every field checked before anything is queued
    entry = registry.resolve(parsed.model, tenant.may_use)
    if entry.engine == "remote":
        raise InvalidRequest("Background responses run on local models only.", param="background")
    ticket = request.app.state.quotas.admit(tenant, requested_tokens(body, settings.default_max_tokens))
    queued = ResponseObject(model=entry.id, status="queued", background=True, instructions=parsed.instructions,
                            previous_response_id=parsed.previous_response_id, metadata=parsed.metadata or {})

    async def generate(save) -> None:
        async with registry.lease(entry.id, tenant.may_use) as model:
            writer, chunks = _start_generation(parsed, model, registry, settings, tenant, history, queued.id)
            writer.response.background = True
            writer.on_done = save
            async for index, chunk in chunks:
                if isinstance(chunk, GenerationFinished):
                    ticket.charge(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                writer.add(index, chunk)

    request.app.state.background.start(queued.model_dump(mode="json"), input_items(parsed), tenant.label, ticket,
                                       generate)
    return JSONResponse(queued.model_dump(mode="json"))


def _start_generation(
    body: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings, tenant: Tenant,
    history: list[dict], response_id: str | None = None,
) -> tuple[ResponseWriter, ChoiceChunks]:
    with responses_param_names():
        chat = to_chat_request(body, history)
        prepared = prepare_chat(chat, model.renderer, model.engine.capabilities,
                                registry.generation_defaults(model.model_id), server_reasoning(settings))
    text_format = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format \
        else {"type": "text"}
    shell = ResponseObject(
        model=model.model_id, instructions=body.instructions, max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {}, parallel_tool_calls=body.parallel_tool_calls is not False,
        temperature=body.temperature, top_p=body.top_p, text={"format": text_format},
        tool_choice=body.tool_choice.model_dump(exclude_none=True) if hasattr(body.tool_choice, "model_dump")
        else body.tool_choice or "auto",
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
        top_logprobs=body.top_logprobs, user=body.user, previous_response_id=body.previous_response_id,
        store=body.store is not False, **({"id": response_id} if response_id else {}),
    )
    writer = ResponseWriter(shell, prepared.output(), wants_logprobs(body))
    chunks = generation_chunks(model, prepared.requests, settings, tenant, body)
    return writer, chunks
