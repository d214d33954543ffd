"""Turns OpenAI chat messages into the plain dicts chat templates expect.

Templates see `{"role", "content"}` with string content: text parts are joined, `developer` becomes
`system` (the newer OpenAI name for the same thing), and anything we cannot render is refused clearly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from errors import InvalidRequest

_ROLE_ALIASES = {"developer": "system"}
_SUPPORTED_ROLES = {"system", "user", "assistant"}


def content_text(content: Any, param: str) -> str:
    """String content as is; a list of parts must be text parts, which are concatenated."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        part_type = part.get("type")
        if part_type != "text":
            raise InvalidRequest(
                f"Content parts of type '{part_type}' are not supported by this model; only 'text' parts are.",
                param=f"{param}[{index}].type",
            )
        texts.append(part.get("text") or "")
    return "".join(texts)


def to_template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    rendered = []
    for index, message in enumerate(messages):
        role = _ROLE_ALIASES.get(message["role"], message["role"])
        if role not in _SUPPORTED_ROLES:
            raise InvalidRequest(
                f"Messages with role '{message['role']}' are not supported yet.", param=f"messages[{index}].role"
            )
        rendered.append({"role": role, "content": content_text(message.get("content"), f"messages[{index}].content")})
    return rendered
