"""The web page's conversations on the server (`/chat/conversations`), per API key: the page keeps them here, so
they follow the key to another browser (in the browser's IndexedDB instead when the user unticks "Keep
conversations on the server", or when listing here fails). Stored as the page sends them
(state/page_conversations.py)."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, Request

from api.deps import TenantDep
from errors import ConversationNotFound, InvalidRequest
from state.page_conversations import PageConversations

router = APIRouter(tags=["web"], include_in_schema=False)
ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _store(request: Request) -> PageConversations:
    return request.app.state.page_conversations


def _checked_id(conversation_id: str) -> str:
    if not ID.match(conversation_id):
        raise InvalidRequest("A conversation id is 1 to 64 letters, digits, '-' or '_'.", param="id")
    return conversation_id


@router.get("/chat/conversations")
async def list_conversations(request: Request, tenant: TenantDep, q: str = "") -> dict:
    """Newest first: id, title, created, updated (ms since the epoch, as the page keeps them); `q` searches titles
    and text."""
    return {"object": "list", "data": await _store(request).list(tenant.label, q.strip())}


@router.get("/chat/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, request: Request, tenant: TenantDep) -> dict:
    conversation = await _store(request).get(tenant.label, _checked_id(conversation_id))
    if conversation is None:
        raise ConversationNotFound(conversation_id)
    return conversation


@router.put("/chat/conversations/{conversation_id}")
async def put_conversation(conversation_id: str, request: Request, tenant: TenantDep) -> dict:
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        conversation = json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"The conversation is not JSON: {exc}") from exc
    if not isinstance(conversation, dict) or conversation.get("id") != _checked_id(conversation_id) \
            or not isinstance(conversation.get("nodes"), dict) or not isinstance(conversation.get("roots"), list):
        raise InvalidRequest("A conversation is an object with this id, `nodes` (an object) and `roots` (a list).")
    await _store(request).put(tenant.label, conversation, body)
    return {"id": conversation_id, "updated": conversation.get("updated")}


@router.delete("/chat/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, request: Request, tenant: TenantDep) -> dict:
    if not await _store(request).delete(tenant.label, _checked_id(conversation_id)):
        raise ConversationNotFound(conversation_id)
    return {"id": conversation_id, "deleted": True}
