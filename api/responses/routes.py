"""`POST /v1/responses` (and bare): the Responses API on local engines, stored (SQLite, state/response_store.py)
unless `store: false`, continued with `previous_response_id`; relayed as they are for remote models.

A local request becomes a chat request (`api/responses/request.py`) and runs through the same engines; the
answer is written by `api/responses/output.py`. The body is validated here, not by FastAPI, so a remote
upstream gets exactly what the client sent, including item types only it understands.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import Response

from api.conversations.items import stored_item
from api.deps import ConversationsDep, RegistryDep, SettingsDep, StoreDep, TenantDep
from api.pipeline.prepare import prepare_chat
from api.pipeline.reasoning_plan import server_reasoning
from api.protocol import ErrorResponse
from api.responses.background import BackgroundRuns
from api.responses.output import ResponseWriter
from api.responses.protocol import ResponseObject, ResponsesRequest
from api.responses.request import (
    check_response_limits,
    conversation_id,
    input_items,
    responses_param_names,
    to_chat_request,
    wants_logprobs,
)
from api.serving import ChoiceChunks, LocalBackground, LocalRun, generation_chunks, requested_tokens, serve
from backends.registry import LoadedModel, ModelRegistry
from errors import InvalidRequest
from settings import Settings
from state.conversation_store import ConversationStore
from state.response_store import ResponseStore
from tenants.keys import Tenant

logger = logging.getLogger(__name__)

router = APIRouter(tags=["responses"])

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 500, 503)}


def _background_runs(request: Request) -> BackgroundRuns:
    return request.app.state.background


BackgroundDep = Annotated[BackgroundRuns, Depends(_background_runs)]


@router.post("/v1/responses", response_model=ResponseObject, responses=_ERRORS)
@router.post("/responses", response_model=ResponseObject, responses=_ERRORS, include_in_schema=False)
async def create_response(request: Request, registry: RegistryDep, tenant: TenantDep, settings: SettingsDep,
                          store: StoreDep, conversations: ConversationsDep, background: BackgroundDep,
                          body: Any = Body(...)) -> Response:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    parsed = ResponsesRequest.model_validate(body)  # a ValidationError becomes the app's usual 400
    if parsed.model_extra:
        logger.debug("Ignoring fields this server does not use: %s", sorted(parsed.model_extra))
    check_response_limits(parsed, settings.max_tokens_limit, settings.max_messages)
    if parsed.background and registry.resolve(parsed.model, tenant.may_use).engine == "remote":
        raise InvalidRequest("Background responses run on local models only.", param="background")

    async def start_local(model: LoadedModel) -> LocalRun | LocalBackground:
        # Only here: a remote model's `previous_response_id` or `conversation` is its upstream's, relayed untouched.
        kept = Keeping(parsed, tenant, store, conversations)
        history = await kept.history()
        if parsed.background:
            return _start_background(parsed, model, registry, settings, tenant, history, kept, background)
        writer, chunks = _start_generation(parsed, model, registry, settings, tenant, history)
        kept.attach(writer)
        return LocalRun(writer, chunks, bool(parsed.stream))

    return await serve(request, registry, parsed.model, tenant=tenant,
                       request_tokens=requested_tokens(body, settings.default_max_tokens), start_local=start_local,
                       relay_path="responses", relay_body=lambda: body)


@router.get("/v1/responses/{response_id}", responses={404: {"model": ErrorResponse}})
@router.get("/responses/{response_id}", include_in_schema=False)
async def get_response(response_id: str, tenant: TenantDep, store: StoreDep) -> dict:
    response, _ = await store.load(response_id, tenant.label)
    return response


@router.delete("/v1/responses/{response_id}", responses={404: {"model": ErrorResponse}})
@router.delete("/responses/{response_id}", include_in_schema=False)
async def delete_response(response_id: str, tenant: TenantDep, store: StoreDep) -> dict:
    await store.delete(response_id, tenant.label)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items", responses={404: {"model": ErrorResponse}})
@router.get("/responses/{response_id}/input_items", include_in_schema=False)
async def list_input_items(response_id: str, tenant: TenantDep, store: StoreDep, after: str | None = None,
                           limit: int = Query(20, ge=1, le=100), order: str = Query("desc", pattern="^(asc|desc)$")):
    """The input items a stored response answered (this turn's), paginated as OpenAI: `after` an item id."""
    _, items = await store.load(response_id, tenant.label)
    items = items if order == "asc" else list(reversed(items))
    ids = [item.get("id") for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    page = items[start:start + limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(items)}


@router.post("/v1/responses/{response_id}/cancel", responses={404: {"model": ErrorResponse}})
@router.post("/responses/{response_id}/cancel", include_in_schema=False)
async def cancel_response(response_id: str, tenant: TenantDep, store: StoreDep, background: BackgroundDep) -> dict:
    """Stop a background response (a finished one is returned as it is)."""
    response, _ = await store.load(response_id, tenant.label)  # 404 if unknown or not yours
    if not response.get("background"):
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    await background.cancel(response_id, tenant.label)
    return (await store.load(response_id, tenant.label))[0]


class Keeping:
    """What a turn keeps: the response (unless `store: false`), and the turn's items in its `conversation`."""

    def __init__(self, parsed: ResponsesRequest, tenant: Tenant, store: ResponseStore,
                 conversations: ConversationStore) -> None:
        self.parsed, self.tenant, self.store, self.conversations = parsed, tenant, store, conversations
        self.conversation = conversation_id(parsed)
        self.items = input_items(parsed)

    async def history(self) -> list[dict]:
        if self.conversation:  # (404 if it is not this key's)
            return await self.conversations.items(self.tenant.label, self.conversation)
        if self.parsed.previous_response_id:
            return await self.store.conversation(self.parsed.previous_response_id, self.tenant.label)
        return []

    def attach(self, writer: ResponseWriter) -> None:
        if self.conversation:
            writer.response.conversation = {"id": self.conversation}
        if self.conversation or self.parsed.store is not False:
            writer.on_done = self._done

    def _done(self, response: dict) -> Future | None:
        """Stored once generated, for previous_response_id and GET; the conversation gets the turn's input and
        output items (the write the writer waits for: the next turn must read them)."""
        saved = self.store.save(response, self.items, self.tenant.label) if self.parsed.store is not False else None
        if not self.conversation:
            return saved
        turn = [stored_item(item) for item in self.items + response.get("output", [])]
        return self.conversations.add_later(self.tenant.label, self.conversation, turn)


def _start_background(parsed: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings,
                      tenant: Tenant, history: list[dict], kept: Keeping,
                      background: BackgroundRuns) -> LocalBackground:
    """Answered at once with the queued response; the generation goes on in a task, stored as it goes."""
    queued = ResponseObject(model=model.model_id, status="queued", background=True, instructions=parsed.instructions,
                            previous_response_id=parsed.previous_response_id, metadata=parsed.metadata or {},
                            conversation={"id": kept.conversation} if kept.conversation else None)
    writer, chunks = _start_generation(parsed, model, registry, settings, tenant, history, queued.id)
    writer.response.background = True
    kept.attach(writer)
    body = queued.model_dump(mode="json")
    return LocalBackground(body, writer, chunks,
                           launch=lambda generate: background.start(body, kept.items, tenant.label, generate))


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
