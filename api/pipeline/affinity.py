"""Which conversation a request continues, as clients and routers name it: the `x-session-id` header (agent
harnesses and session-affinity routers), else the body's `prompt_cache_key` (OpenAI's name for it, in Chat
Completions, Completions and Responses). A Responses `previous_response_id` is no such name: it changes every turn
(a key per turn would move the chain out of its slot each time); the chain's stored turns are the next prompt's
prefix, which finds its slot by itself. A Responses `conversation` is one: the same id every turn.

The key is logged with the request (`session=`), relayed upstream by the remote engine as the same header (the body
goes as it came), and handed to the engine: the llama.cpp scheduler keeps a conversation in the slot its key used
last, and a new conversation out of the slots other keys hold while an unclaimed slot is free (see Scheduler._admit).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from api.observability import current_request

SESSION_HEADER = "x-session-id"
BODY_FIELDS = ("prompt_cache_key", "conversation")
MAX_KEY_LENGTH = 256  # a key is a name, not content: longer ones are cut (never refused: it is only a hint)


def affinity_key(headers: Mapping[str, str] | None, body: BaseModel | dict | None) -> str | None:
    if headers is not None and (given := headers.get(SESSION_HEADER, "").strip()):
        return given[:MAX_KEY_LENGTH]
    for name in BODY_FIELDS:
        value = body.get(name) if isinstance(body, dict) else getattr(body, name, None)
        if isinstance(value, dict):  # a Responses `conversation` given as {"id": ...}
            value = value.get("id")
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_KEY_LENGTH]
    return None


def request_affinity(body: BaseModel | dict | None) -> str | None:
    """The key of the request being served: its header (noted by the log middleware) or its body's; noted on the
    request's log record."""
    record = current_request.get()
    given = record.session if record is not None else None
    key = affinity_key({SESSION_HEADER: given} if given else None, body)
    if record is not None:
        record.session = key
    return key
