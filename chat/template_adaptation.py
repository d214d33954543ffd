"""A conversation reshaped for what its template accepts, found at load by rendering probe conversations (as
llama.cpp's chat code does), so a template never fails a request over how the conversation is spelled:

- a template that refuses the system role (Gemma 2 raises "System role not supported") gets the system text folded
  into the first user turn, as llama-server does;
- a template that concatenates tool-call arguments as text (Functionary 3.x: `"..." + arguments`) gets them as the
  JSON string; every other template gets them as an object, as transformers' convention has it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from errors import InvalidRequest

logger = logging.getLogger(__name__)

Render = Callable[[list[dict]], str]

_USER = {"role": "user", "content": "What is the weather in Paris?"}
_CALL = {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
_RESULT = {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "18C, sunny"}


@dataclass(frozen=True)
class TemplateNeeds:
    fold_system: bool = False  # the template refuses the system role
    string_arguments: bool = False  # the template handles tool-call arguments as text only


def probe(render: Render, origin: str) -> TemplateNeeds:
    """What the template needs, from how it renders small conversations (`render` raises when it refuses one)."""
    fold_system = _refuses(render, [{"role": "system", "content": "Be brief."}, _USER]) and not _refuses(render, [_USER])
    with_object = [_USER, _assistant_calling(_CALL), _RESULT]
    text_call = {**_CALL, "function": {**_CALL["function"], "arguments": json.dumps(_CALL["function"]["arguments"])}}
    string_arguments = _refuses(render, with_object) and not _refuses(render, [_USER, _assistant_calling(text_call),
                                                                               _RESULT])
    if fold_system:
        logger.info("The chat template (%s) refuses the system role: system text goes into the first user turn",
                    origin)
    if string_arguments:
        logger.info("The chat template (%s) reads tool-call arguments as text: they are given as JSON strings", origin)
    return TemplateNeeds(fold_system=fold_system, string_arguments=string_arguments)


def adapt(messages: list[dict], needs: TemplateNeeds) -> list[dict]:
    if needs.fold_system:
        messages = _fold_system(messages)
    if needs.string_arguments:
        messages = [_with_string_arguments(message) for message in messages]
    return messages


def _assistant_calling(call: dict) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _refuses(render: Render, messages: list[dict]) -> bool:
    try:
        render(messages)
        return False
    except InvalidRequest:
        return True


def _fold_system(messages: list[dict]) -> list[dict]:
    system = [m for m in messages if m.get("role") == "system"]
    if not system:
        return messages
    text = "\n\n".join(_text(m.get("content")) for m in system)
    rest = [m for m in messages if m.get("role") != "system"]
    first_user = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
    if first_user is None:
        return [{"role": "user", "content": text}, *rest]
    user = rest[first_user]
    content = user.get("content")
    if isinstance(content, list):  # content parts: the system text goes first, as a text part
        folded = {**user, "content": [{"type": "text", "text": text + "\n\n"}, *content]}
    else:
        folded = {**user, "content": f"{text}\n\n{content or ''}"}
    return [*rest[:first_user], folded, *rest[first_user + 1:]]


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _with_string_arguments(message: dict) -> dict:
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {**message, "tool_calls": [_string_call(call) for call in calls]}


def _string_call(call: dict) -> dict:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        return call
    return {**call, "function": {**function, "arguments": json.dumps(arguments, ensure_ascii=False)}}
