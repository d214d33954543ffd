"""Anthropic Messages API wire types (https://docs.anthropic.com/en/api/messages): the request as clients send
it (content blocks stay plain dicts: api/anthropic/request.py reads and checks them) and the answer we build."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import Field

from api.protocol import WireModel

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessagesRequest(WireModel):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=16)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None  # {"effort": "high"} (Claude Code), {"format": {json_schema}}
    output_format: dict[str, Any] | None = None  # the structured-outputs beta's spelling of output_config.format
    stream: bool | None = None


class CountTokensRequest(WireModel):
    model: str | None = None
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class CountTokensResponse(WireModel):
    input_tokens: int


class MessagesUsage(WireModel):
    input_tokens: int  # prompt tokens not read from the cache
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0  # prompt tokens our prompt cache (memory or disk) already held


class Message(WireModel):
    id: str = Field(default_factory=lambda: f"msg_{secrets.token_hex(12)}")
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessagesUsage = Field(default_factory=lambda: MessagesUsage(input_tokens=0, output_tokens=0))


def tool_use_id(call_id: str) -> str:
    """Our call ids (`call_...`) as Anthropic spells tool use ids."""
    return "toolu_" + call_id.removeprefix("call_")
