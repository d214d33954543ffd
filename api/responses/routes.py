"""`POST /v1/responses` (and bare): the Responses API on local engines, stored (SQLite, state/response_store.py)
unless `store: false`, continued with `previous_response_id`; relayed as they are for remote models.

A local request becomes a chat request (`api/responses/request.py`) and runs through the same engines; the
answer is written by `api/responses/output.py`. The body is validated here, not by FastAPI, so a remote
upstream gets exactly what the client sent, including item types only it understands.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import Response

from api.deps import ConversationsDep, RegistryDep, SettingsDep, StoreDep, TenantDep
from api.protocol import ErrorResponse
from api.responses.background import BackgroundRuns
from api.responses.compaction import CompactionSeal, since_last_compaction
from api.responses.output import response_usage
from api.responses.protocol import ResponseObject, ResponsesRequest, item_page, new_item_id
from api.responses.turn import Keeping, compact, parsed_request, start_turn
from api.serving import LocalBackground, LocalRun, LocalWhole, requested_tokens, serve
from backends.registry import LoadedModel, ModelRegistry
from errors import InvalidRequest
from settings import Settings
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
    parsed = parsed_request(body, settings)
    if parsed.background and registry.resolve(parsed.model, tenant.may_use).engine == "remote":
        raise InvalidRequest("Background responses run on local models only.", param="background")

    async def start_local(model: LoadedModel) -> LocalRun | LocalBackground:
        # Only here: a remote model's `previous_response_id` or `conversation` is its upstream's, relayed untouched.
        kept = Keeping(parsed, tenant, store, conversations)
        seal = request.app.state.compaction_seal
        if parsed.background:
            return await _start_background(parsed, model, registry, settings, tenant, kept, seal, background)
        writer, chunks = await start_turn(parsed, model, registry, settings, tenant, kept, seal)
        return LocalRun(writer, chunks, bool(parsed.stream))

    return await serve(request, registry, parsed.model, tenant=tenant,
                       request_tokens=requested_tokens(body, settings.default_max_tokens), start_local=start_local,
                       relay_path="responses", relay_body=lambda: body)


@router.post("/v1/responses/compact", responses=_ERRORS)
@router.post("/responses/compact", include_in_schema=False)
async def compact_conversation(request: Request, registry: RegistryDep, tenant: TenantDep, settings: SettingsDep,
                               store: StoreDep, conversations: ConversationsDep, body: Any = Body(...)) -> Response:
    """A conversation (`input`, after `previous_response_id`'s chain if given) as one compaction item, to send as
    the next turn's input in place of the history (api/responses/compaction.py)."""
    parsed = parsed_request({"input": [], **body} if isinstance(body, dict) else body, settings)
    seal = request.app.state.compaction_seal

    async def start_local(model: LoadedModel) -> LocalWhole:
        kept = Keeping(parsed, tenant, store, conversations)
        history = since_last_compaction(await kept.history())
        item, usage = await compact([*history, *kept.items], parsed, model, registry, settings, tenant, seal)
        compacted = {"id": new_item_id("resp"), "object": "response.compaction", "created_at": int(time.time()),
                     "output": [item], "usage": response_usage(usage).model_dump(mode="json")}
        return LocalWhole(compacted, usage.prompt_tokens)

    return await serve(request, registry, parsed.model, tenant=tenant,
                       request_tokens=requested_tokens(body, settings.default_max_tokens), start_local=start_local,
                       relay_path="responses/compact", relay_body=lambda: body)


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
    return item_page(items, after, limit, order)


@router.post("/v1/responses/{response_id}/cancel", responses={404: {"model": ErrorResponse}})
@router.post("/responses/{response_id}/cancel", include_in_schema=False)
async def cancel_response(response_id: str, tenant: TenantDep, store: StoreDep, background: BackgroundDep) -> dict:
    """Stop a background response (a finished one is returned as it is)."""
    response, _ = await store.load(response_id, tenant.label)  # 404 if unknown or not yours
    if not response.get("background"):
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    await background.cancel(response_id, tenant.label)
    return (await store.load(response_id, tenant.label))[0]


async def _start_background(parsed: ResponsesRequest, model: LoadedModel, registry: ModelRegistry,
                            settings: Settings, tenant: Tenant, kept: Keeping, seal: CompactionSeal,
                            background: BackgroundRuns) -> LocalBackground:
    """Answered at once with the queued response; the generation goes on in a task, stored as it goes."""
    queued = ResponseObject(model=model.model_id, status="queued", background=True, instructions=parsed.instructions,
                            previous_response_id=parsed.previous_response_id, metadata=parsed.metadata or {},
                            conversation={"id": kept.conversation} if kept.conversation else None)
    writer, chunks = await start_turn(parsed, model, registry, settings, tenant, kept, seal, queued.id)
    writer.response.background = True
    body = queued.model_dump(mode="json")
    return LocalBackground(body, writer, chunks,
                           launch=lambda generate: background.start(body, kept.items, tenant.label, generate))
