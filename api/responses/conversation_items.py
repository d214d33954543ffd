"""Items as a conversation keeps and answers them: each with an id, messages with content parts (a string becomes
one text part) and a status, as OpenAI's ConversationItem types read them."""

from __future__ import annotations

from typing import Any

from api.responses.protocol import new_item_id
from api.responses.request import check_input_items
from errors import InvalidRequest
from state.conversation_store import MAX_ITEMS_PER_CHANGE

_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
_WITH_STATUS = {"message", "function_call", "function_call_output", "custom_tool_call", "custom_tool_call_output"}


def stored_item(item: dict[str, Any]) -> dict[str, Any]:
    item = dict(item)
    kind = item.setdefault("type", "message")
    item.setdefault("id", new_item_id(_ID_PREFIX.get(kind, "item")))
    if kind == "message":
        text_type = "output_text" if item.get("role") == "assistant" else "input_text"
        content = item.get("content")
        parts = [{"type": text_type, "text": content}] if isinstance(content, str) else list(content or [])
        item["content"] = [{**part, "annotations": part.get("annotations", [])} if part.get("type") == "output_text"
                           else part for part in parts]
    if kind in _WITH_STATUS:
        item.setdefault("status", "completed")
    return item


def checked_items(items: Any, param: str = "items") -> list[dict[str, Any]]:
    """Items a client adds: at most 20, each one a later turn can read (else a 400 naming it), as stored."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidRequest("'items' must be a list of items.", param=param)
    if len(items) > MAX_ITEMS_PER_CHANGE:
        raise InvalidRequest(f"At most {MAX_ITEMS_PER_CHANGE} items can be added at once.", param=param)
    check_input_items(items, param)
    return [stored_item(item) for item in items]
