"""Wire types of the Responses API (`/v1/responses`) as this server serves it: stored, chained with
`previous_response_id` or kept in a `conversation` (conversation_routes.py), streamed and in the background.

Reference: https://platform.openai.com/docs/api-reference/responses . Input items stay plain dicts here: they
come in many shapes, and `api/responses/request.py` checks each one and names the exact field it refuses.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field

from api.protocol import WireModel

# ---------------------------------------------------------------- request
# https://platform.openai.com/docs/api-reference/responses/create


class ResponsesTool(WireModel):
    type: str  # "function" and "custom" are served; built-in tools (web_search, file_search...) are refused by name
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    format: dict[str, Any] | None = None  # a custom tool's input: {"type": "text"} or a grammar (request.py checks it)


class ResponsesToolChoice(WireModel):
    type: str
    name: str | None = None


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(WireModel):
    input: str | list[dict[str, Any]]
    model: str | None = None
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = None
    include: list[str] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    store: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None  # the conversation it continues (api/pipeline/affinity.py)
    context_management: list[dict[str, Any]] | None = None  # [{"type": "compaction", "compact_threshold": N}]
    generate: bool | None = None  # false: a warm-up, the prompt evaluated into the cache and nothing generated

    # --- llama.cpp / vLLM extensions (not in OpenAI's API) ---
    seed: int | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None  # token id -> bias, as chat's
    reasoning_budget: Annotated[int, Field(ge=-1)] | None = None  # thinking tokens before the block is closed
    chat_template_kwargs: dict[str, Any] | None = None


# ---------------------------------------------------------------- response object
# https://platform.openai.com/docs/api-reference/responses/object


class OutputText(WireModel):
    type: Literal["output_text"] = "output_text"
    text: str = ""
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


class OutputMessage(WireModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"
    content: list[OutputText] = Field(default_factory=list)


class ReasoningTextPart(WireModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str = ""


class ReasoningItem(WireModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[ReasoningTextPart] = Field(default_factory=list)
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"


class FunctionCallItem(WireModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str = ""
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"


class CustomToolCallItem(WireModel):
    """https://platform.openai.com/docs/api-reference/responses/object (output item `custom_tool_call`)"""

    id: str
    type: Literal["custom_tool_call"] = "custom_tool_call"
    call_id: str
    name: str
    input: str = ""
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"


class CompactionItem(WireModel):
    """The history before it, summarised and sealed by this server (api/responses/compaction.py)."""

    id: str
    type: Literal["compaction"] = "compaction"
    encrypted_content: str


class InputTokensDetails(WireModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(WireModel):
    reasoning_tokens: int = 0


class ResponseUsage(WireModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(WireModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(WireModel):
    code: str
    message: str


class ResponseObject(WireModel):
    id: str = Field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    object: Literal["response"] = "response"
    created_at: float = Field(default_factory=lambda: float(int(time.time())))
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"] = "in_progress"
    completed_at: float | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[ReasoningItem | OutputMessage | FunctionCallItem | CustomToolCallItem | CompactionItem] = Field(
        default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    conversation: dict[str, str] | None = None  # {"id": ...}: the conversation this turn was added to
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    store: bool = True  # kept for previous_response_id and GET /v1/responses/{id} (false when asked)
    background: bool = False
    usage: ResponseUsage | None = None
    user: str | None = None


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def item_list(items: list[dict], has_more: bool = False) -> dict:
    """A list of items as OpenAI answers one (input items, conversation items)."""
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


def item_page(items: list[dict], after: str | None, limit: int, order: str) -> dict:
    """One page of `items` (kept oldest first), as OpenAI pages them: `order` asc or desc, from after the item
    with id `after`, `limit` at most."""
    items = items if order == "asc" else items[::-1]
    ids = [item.get("id") for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    return item_list(items[start:start + limit], has_more=start + limit < len(items))
