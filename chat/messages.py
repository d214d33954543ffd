"""Turns OpenAI chat messages into the plain dicts chat templates expect.

Templates see `{"role", "content"}` with string content: text parts are joined, `developer` becomes
`system` (the newer OpenAI name for the same thing). Tool traffic (assistant `tool_calls`, `tool` results,
legacy `function_call` / `function`) goes to templates that understand it as structured fields; for the
others it is written out in the call format the tool prompt teaches, results in `<tool_response>` text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from chat.custom_tools import INPUT_KEY
from chat.media import MEDIA_MARKER, MediaPart, media_part
from chat.tool_formats import HERMES, ToolCallFormat
from errors import InvalidRequest

_ROLE_ALIASES = {"developer": "system", "function": "tool"}
_SUPPORTED_ROLES = {"system", "user", "assistant", "tool"}
MediaSink = Callable[[MediaPart], None]


def content_text(content: Any, param: str, media: MediaSink | None = None) -> str:
    """String content as is; a list of parts is concatenated: text parts as they are, and (for a model that takes
    media: `media` given) image and audio parts as the media marker, the part handed to `media`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        part_type = part.get("type")
        if part_type == "text":
            texts.append(part.get("text") or "")
            continue
        where = part.get("source_param") or f"{param}[{index}]"  # another API's part names its own field
        found = media_part(part, where) if media is not None else None  # (a text-only model reads no media field)
        if found is None:
            raise InvalidRequest(
                f"Content parts of type '{part_type}' are not supported by this model; only 'text' parts are.",
                param=f"{where}.type",
            )
        media(found)
        texts.append(MEDIA_MARKER)
    return "".join(texts)


def _calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's calls as function calls (a custom tool's input is its one string argument, as the prompt shows
    custom tools: chat/custom_tools.py)."""
    calls = [_as_function_call(call) for call in message.get("tool_calls") or []]
    if message.get("function_call"):
        calls.append({"id": "", "type": "function", "function": message["function_call"]})
    return calls


def _as_function_call(call: dict[str, Any]) -> dict[str, Any]:
    if call.get("type") != "custom":
        return call
    custom = call["custom"]
    arguments = json.dumps({INPUT_KEY: custom["input"]}, ensure_ascii=False)
    return {"id": call["id"], "type": "function", "function": {"name": custom["name"], "arguments": arguments}}


def _parsed_arguments(arguments: str, param: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        raise InvalidRequest("Tool call arguments in the history must be a JSON string.", param=param) from None


def _structured_message(role: str, text: str, message: dict[str, Any], param: str) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": role, "content": text}
    calls = _calls_of(message)
    if calls:
        rendered["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _parsed_arguments(call["function"]["arguments"], param)}}
            for call in calls
        ]
    if role == "tool":
        rendered["tool_call_id"] = message.get("tool_call_id") or ""
        if message.get("name"):
            rendered["name"] = message["name"]
    return rendered


def _textual_message(
    role: str, text: str, message: dict[str, Any], param: str, call_format: ToolCallFormat
) -> dict[str, str]:
    if role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"}
    calls = _calls_of(message)
    if calls:
        written = call_format.render_calls(
            [(call["function"]["name"], _parsed_arguments(call["function"]["arguments"], param)) for call in calls]
        )
        text = f"{text}\n{written}" if text else written
    return {"role": role, "content": text}


def to_template_messages(
    messages: Sequence[dict[str, Any]], *, native_tools: bool = False, call_format: ToolCallFormat = HERMES,
    media: MediaSink | None = None,
) -> list[dict[str, Any]]:
    """`media`: receives the image and audio parts, in prompt order (None: such parts are a 400)."""
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    rendered = []
    for index, message in enumerate(messages):
        role = _ROLE_ALIASES.get(message["role"], message["role"])
        if role not in _SUPPORTED_ROLES:
            raise InvalidRequest(
                f"Messages with role '{message['role']}' are not supported.", param=f"messages[{index}].role"
            )
        text = content_text(message.get("content"), f"messages[{index}].content", media)
        param = f"messages[{index}].tool_calls"
        if native_tools:
            rendered.append(_structured_message(role, text, message, param))
        else:
            rendered.append(_textual_message(role, text, message, param, call_format))
        thinking = message.get("reasoning_content") or message.get("reasoning")
        if role == "assistant" and thinking:
            rendered[-1]["reasoning_content"] = thinking  # templates that render thinking read this name
    return rendered
