"""Compaction of long Responses conversations (OpenAI's `compaction` item): the model summarises the history, and
one sealed item stands in for it from then on.

When: a create's `context_management: [{"type": "compaction", "compact_threshold": N}]` once the turn's prompt
passes N tokens (the item leads that response's output, the answer follows from the compacted context); a
`compaction_trigger` input item (Codex; the response's output is then exactly that one item); `POST
/v1/responses/compact` (the compacted output, returned whole).

What is kept verbatim: the leading system and developer messages (the prompt's prefix, so the prompt cache keeps
serving it) and the last user message with everything after it (the request being worked on, its open tool calls).
Everything between becomes the summary, which takes the place of those items, at the head of the kept user message.

The item's `encrypted_content` is sealed with the server's key (Fernet: AES-128 and an HMAC-SHA256): opaque to
clients, and a forged or altered item is a 400. The key is `--compaction-key` (instances sharing a state database
share it), else `compaction.key` in the cache directory, made at first use.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from api.responses.protocol import new_item_id
from errors import InvalidRequest
from settings import Settings

logger = logging.getLogger(__name__)

SUMMARY_REQUEST = (
    "Your context is about to be compacted: this conversation so far will be replaced by what you write now. "
    "Write a summary that lets you carry on the work without it: the user's goal and requests, decisions made and "
    "why, what was done (files, commands, tool results that matter, with exact names and values), what failed, "
    "and what remains to do. Be complete and concrete; do not address the user."
)
SUMMARY_HEADING = "Summary of the earlier conversation (written when the context was compacted):"
FORMAT_VERSION = 1
_KEPT_ROLES = ("system", "developer")


class CompactionSeal:
    """Seals and opens compaction items' content with one key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> CompactionSeal:
        if settings.compaction_key:
            try:
                return cls(settings.compaction_key.encode())
            except ValueError as exc:
                raise ValueError("--compaction-key must be a Fernet key: 32 bytes in url-safe base64 (e.g. from "
                                 "`python -c 'from cryptography.fernet import Fernet; "
                                 "print(Fernet.generate_key().decode())'`).") from exc
        try:
            return cls(_key_file(settings.cache_dir / "compaction.key"))
        except OSError as exc:  # (the cache directory is unusable: the prompt cache carries on without it too)
            logger.warning("Cannot keep the compaction key in %s (%s): compaction items last until the server "
                           "stops", settings.cache_dir, exc)
            return cls(Fernet.generate_key())

    def seal(self, content: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps({"v": FORMAT_VERSION, **content}).encode()).decode()

    def open(self, token: Any, param: str) -> dict[str, Any]:
        try:
            content = json.loads(self._fernet.decrypt(token.encode() if isinstance(token, str) else b""))
        except (InvalidToken, ValueError) as exc:
            raise InvalidRequest("This compaction item was not written by this server (or its compaction key "
                                 "changed): send the conversation's items instead.", param=param) from exc
        if content.get("v") != FORMAT_VERSION:
            raise InvalidRequest("This compaction item's format is not one this server reads.", param=param)
        return content


def _key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # (readable by us only)
        except FileExistsError:  # another instance made it meanwhile
            return path.read_bytes().strip()
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
        logger.info("Made the compaction key %s", path)
        return key


def split_history(items: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(kept head, the items to summarise, kept tail): see the module's docstring."""
    start = 0
    while start < len(items) and _is_message(items[start], _KEPT_ROLES):
        start += 1
    last_user = max((i for i in range(start, len(items)) if _is_message(items[i], ("user",))), default=None)
    if last_user is None or last_user == start:  # nothing before the request itself: summarise everything
        return items[:start], items[start:], []
    return items[:start], items[start:last_user], items[last_user:]


def _is_message(item: dict, roles: tuple[str, ...]) -> bool:
    return isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") in roles


def compaction_item(seal: CompactionSeal, head: list[dict], summary: str, tail: list[dict]) -> dict[str, Any]:
    return {"id": new_item_id("cmp"), "type": "compaction",
            "encrypted_content": seal.seal({"head": head, "summary": summary, "tail": tail})}


def expanded(items: list[dict], seal: CompactionSeal, param: str = "input") -> list[dict]:
    """The items with each compaction item replaced by what it stands for: its kept head, the summary, its kept
    tail (the summary goes at the head of the tail's user message: templates that need user and assistant turns
    to alternate get no two user messages in a row)."""
    out: list[dict] = []
    for index, item in enumerate(items):
        if not (isinstance(item, dict) and item.get("type") == "compaction"):
            out.append(item)
            continue
        content = seal.open(item.get("encrypted_content"), f"{param}[{index}].encrypted_content")
        summary = f"{SUMMARY_HEADING}\n{content['summary']}"
        tail = list(content["tail"])
        if tail and _is_message(tail[0], ("user",)):
            tail[0] = {**tail[0], "content": _prefixed(summary, tail[0].get("content"))}
            out += [*content["head"], *tail]
        else:
            out += [*content["head"], {"type": "message", "role": "user", "content": summary}, *tail]
    return out


def _prefixed(summary: str, content: Any) -> Any:
    if isinstance(content, str):
        return f"{summary}\n\n{content}"
    return [{"type": "input_text", "text": f"{summary}\n\n"}, *(content or [])]


def since_last_compaction(items: list[dict]) -> list[dict]:
    """A stored history from its last compaction item on (the items before it are inside it)."""
    last = max((i for i, item in enumerate(items) if isinstance(item, dict) and item.get("type") == "compaction"),
               default=0)
    return items[last:]


def context_threshold(context_management: Any) -> int | None:
    """`context_management`'s compaction threshold (None: no automatic compaction); anything else is a 400."""
    if context_management is None:
        return None
    if not isinstance(context_management, list):
        raise InvalidRequest("'context_management' is a list of entries.", param="context_management")
    threshold = None
    for index, entry in enumerate(context_management):
        param = f"context_management[{index}]"
        if not isinstance(entry, dict) or entry.get("type") != "compaction":
            raise InvalidRequest("Only 'compaction' context management is supported.", param=f"{param}.type")
        given = entry.get("compact_threshold")
        if not isinstance(given, int) or isinstance(given, bool) or given < 1:
            raise InvalidRequest("'compact_threshold' is a positive number of tokens.",
                                 param=f"{param}.compact_threshold")
        threshold = given
    return threshold
