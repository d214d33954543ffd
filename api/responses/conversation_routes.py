"""`/v1/conversations` (and bare): OpenAI's Conversations API on the state database, per API key. A Responses
create with `conversation` reads its items as the history and appends the turn (api/responses/routes.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api.deps import ConversationsDep, TenantDep
from api.protocol import ErrorResponse
from api.responses.conversation_items import checked_items
from api.responses.protocol import item_list, item_page
from errors import InvalidRequest

router = APIRouter(tags=["conversations"])
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404)}
MAX_METADATA_KEYS, MAX_KEY, MAX_VALUE = 16, 64, 512


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and len(k) <= MAX_KEY and isinstance(v, str) and len(v) <= MAX_VALUE
            for k, v in value.items()):
        raise InvalidRequest(f"'metadata' is at most {MAX_METADATA_KEYS} string keys (up to {MAX_KEY} characters) "
                             f"with string values (up to {MAX_VALUE}).", param="metadata")
    return value


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def _json_body(request: Request) -> Any:
    """The body as JSON; an empty body is an empty object (the SDK's create with no arguments sends one)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return await request.json()
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not JSON: {exc}") from exc


JsonBody = Annotated[Any, Depends(_json_body)]


@router.post("/v1/conversations", responses=_ERRORS)
@router.post("/conversations", include_in_schema=False)
async def create_conversation(tenant: TenantDep, conversations: ConversationsDep, body: JsonBody) -> dict:
    body = _object(body)
    items = checked_items(body.get("items"))
    return await conversations.create(tenant.label, _metadata(body.get("metadata")), items)


@router.get("/v1/conversations/{conversation_id}", responses=_ERRORS)
@router.get("/conversations/{conversation_id}", include_in_schema=False)
async def get_conversation(conversation_id: str, tenant: TenantDep, conversations: ConversationsDep) -> dict:
    return await conversations.get(tenant.label, conversation_id)


@router.post("/v1/conversations/{conversation_id}", responses=_ERRORS)
@router.post("/conversations/{conversation_id}", include_in_schema=False)
async def update_conversation(conversation_id: str, tenant: TenantDep, conversations: ConversationsDep,
                              body: JsonBody) -> dict:
    body = _object(body)
    if "metadata" not in body:
        raise InvalidRequest("An update sets 'metadata'.", param="metadata")
    return await conversations.update(tenant.label, conversation_id, _metadata(body["metadata"]))


@router.delete("/v1/conversations/{conversation_id}", responses=_ERRORS)
@router.delete("/conversations/{conversation_id}", include_in_schema=False)
async def delete_conversation(conversation_id: str, tenant: TenantDep, conversations: ConversationsDep) -> dict:
    await conversations.delete(tenant.label, conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.post("/v1/conversations/{conversation_id}/items", responses=_ERRORS)
@router.post("/conversations/{conversation_id}/items", include_in_schema=False)
async def add_items(conversation_id: str, tenant: TenantDep, conversations: ConversationsDep,
                    body: JsonBody) -> dict:
    items = checked_items(_object(body).get("items"))
    if not items:
        raise InvalidRequest("'items' must hold at least one item.", param="items")
    return item_list(await conversations.add(tenant.label, conversation_id, items))


@router.get("/v1/conversations/{conversation_id}/items", responses=_ERRORS)
@router.get("/conversations/{conversation_id}/items", include_in_schema=False)
async def list_items(conversation_id: str, tenant: TenantDep, conversations: ConversationsDep,
                     after: str | None = None, limit: int = Query(20, ge=1, le=100),
                     order: str = Query("desc", pattern="^(asc|desc)$")) -> dict:
    """Paginated as OpenAI's: `after` an item id, newest first unless `order=asc`. (`include` asks for data this
    server never produces: nothing to add.)"""
    return item_page(await conversations.items(tenant.label, conversation_id), after, limit, order)


@router.get("/v1/conversations/{conversation_id}/items/{item_id}", responses=_ERRORS)
@router.get("/conversations/{conversation_id}/items/{item_id}", include_in_schema=False)
async def get_item(conversation_id: str, item_id: str, tenant: TenantDep, conversations: ConversationsDep) -> dict:
    return await conversations.item(tenant.label, conversation_id, item_id)


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}", responses=_ERRORS)
@router.delete("/conversations/{conversation_id}/items/{item_id}", include_in_schema=False)
async def delete_item(conversation_id: str, item_id: str, tenant: TenantDep, conversations: ConversationsDep) -> dict:
    """Answers the conversation, as OpenAI's does."""
    return await conversations.delete_item(tenant.label, conversation_id, item_id)
