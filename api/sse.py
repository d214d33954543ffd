"""The one place Server-Sent Events are formatted: `data: <json>` per event, named (`event: <type>`) for the APIs
that name theirs (Responses, Anthropic Messages), `data: [DONE]` to end OpenAI chat and completions streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse

DONE = "[DONE]"
PING_SECONDS = 15  # a comment line now and then keeps proxies from closing a stream that waits for a slow token


def _data(payload: dict | str) -> str:
    return payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sse_event(payload: dict | str, event: str | None = None) -> dict:
    """One event for `EventSourceResponse`; a string payload (DONE) goes as is."""
    return {"data": _data(payload)} if event is None else {"event": event, "data": _data(payload)}


def sse_bytes(payload: dict | str, event: str | None = None) -> bytes:
    """The same event as raw bytes, for streams relayed byte for byte."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {_data(payload)}\n\n".encode()


def event_stream(events: AsyncIterator[dict]) -> EventSourceResponse:
    return EventSourceResponse(events, sep="\n", ping=PING_SECONDS)
