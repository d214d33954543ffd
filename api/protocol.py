"""Wire types: the JSON the server reads and writes, mirroring OpenAI's names and field order.

Reference: https://platform.openai.com/docs/api-reference/chat . Requests accept unknown fields (clients
send `store`, `metadata`, ...): they are kept in `model_extra` and logged at debug level by the routes.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from errors import InvalidRequest


class WireModel(BaseModel):
    """Base of every wire type. Responses drop nothing; requests tolerate extra fields."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


# ---------------------------------------------------------------- requests
# https://platform.openai.com/docs/api-reference/chat/create


class TextContentPart(WireModel):
    type: str
    text: str | None = None


class FunctionCall(WireModel):
    name: str
    arguments: str


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CustomCall(WireModel):
    name: str
    input: str


class CustomToolCall(WireModel):
    """A call of a custom tool: its input is raw text (chat/custom_tools.py)."""

    id: str
    type: Literal["custom"] = "custom"
    custom: CustomCall


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall | CustomToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # legacy assistant field
    reasoning_content: str | None = None  # an assistant turn's thinking (llama-server's name)
    reasoning: str | None = None  # the same (vLLM / Ollama / OpenRouter name)


class FunctionDefinition(WireModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class CustomGrammar(WireModel):
    syntax: Literal["lark", "regex"]
    definition: str


class CustomToolFormat(WireModel):
    type: Literal["text", "grammar"]
    grammar: CustomGrammar | None = None


class CustomToolDefinition(WireModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")]
    description: str | None = None
    format: CustomToolFormat | None = None  # None: free text


class ChatCustomTool(WireModel):
    """https://platform.openai.com/docs/guides/function-calling#custom-tools"""

    type: Literal["custom"]
    custom: CustomToolDefinition


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class NamedCustomToolChoice(WireModel):
    type: Literal["custom"]
    custom: NamedFunction


class StreamOptions(WireModel):
    include_usage: bool | None = None


class JsonSchemaFormat(WireModel):
    name: str | None = None
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


ReasoningFormat = Literal["reasoning_content", "reasoning", "both", "none"]


class ChatCompletionRequest(WireModel):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: str | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | NamedCustomToolChoice | None = None
    tools: list[ChatTool | ChatCustomTool] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None  # legacy form of `tools`
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # legacy form of `tool_choice`
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None  # the conversation it continues (api/pipeline/affinity.py)

    # --- llama.cpp / vLLM extensions (not in OpenAI's API) ---
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0.0)] | None = None
    grammar: str | None = None  # raw GBNF, as llama-server accepts
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extra template variables, e.g. {"enable_thinking": false}
    reasoning_format: ReasoningFormat | None = None  # where thinking goes (server default: --reasoning-format)
    reasoning_budget: Annotated[int, Field(ge=-1)] | None = None  # thinking tokens before the block is closed
    # vLLM's: the last message, an assistant's, is the start of the answer: continued, not answered (a prefill)
    continue_final_message: bool | None = None


class RestoreCacheRequest(WireModel):
    """Pre-warm the prompt cache with a conversation (and its tools), as a later chat request would send it."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: str | None = None
    tools: list[ChatTool | ChatCustomTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | NamedCustomToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None  # they change the prompt
    chat_template_kwargs: dict[str, Any] | None = None


class RestoreCacheResponse(BaseModel):
    model: str
    prompt_tokens: int  # the whole prompt, as a chat request with these messages counts it
    cached_tokens: int  # now cached for requests that continue this conversation
    reused_tokens: int  # of those, already cached before (memory or disk)
    seconds: float


class CompletionRequest(WireModel):
    """Legacy text completions (`/v1/completions`): the prompt is used as is, no chat template."""

    prompt: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for this endpoint
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    seed: int | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    suffix: str | None = None
    user: str | None = None
    prompt_cache_key: str | None = None  # the conversation it continues (api/pipeline/affinity.py)
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0.0)] | None = None
    grammar: str | None = None


class EmbeddingRequest(WireModel):
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)] | list[int] | \
        Annotated[list[list[int]], Field(min_length=1, max_length=2048)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


class TokenizeRequest(WireModel):
    content: str
    model: str | None = None


class DetokenizeRequest(WireModel):
    tokens: list[int]
    model: str | None = None


class SetModelRequest(WireModel):
    modelName: str  # noqa: N815 - the customer's existing contract spells it this way
    wait: bool = True  # false: answer 202 at once; the model's status shows the load's progress


class ModelActionRequest(WireModel):
    model: str
    wait: bool = True
    stream: bool = False  # load only: progress as Server-Sent Events


# ---------------------------------------------------------------- responses
# https://platform.openai.com/docs/api-reference/chat/object


class TopLogprob(WireModel):
    token: str
    bytes: list[int] | None
    logprob: float


class ChatCompletionTokenLogprob(WireModel):
    token: str
    bytes: list[int] | None
    logprob: float
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(WireModel):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class PromptTokensDetails(WireModel):
    cached_tokens: int = 0


class CompletionTokensDetails(WireModel):
    reasoning_tokens: int = 0


class CompletionUsage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall | CustomToolCall] | None = None
    function_call: FunctionCall | None = None  # legacy `functions` requests only
    reasoning_content: str | None = None  # thinking, by --reasoning-format (omitted when there is none)
    reasoning: str | None = None


class ChatCompletionChoice(WireModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now_seconds() -> int:
    return int(time.time())


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None


# https://platform.openai.com/docs/api-reference/chat/streaming


class DeltaFunctionCall(WireModel):
    name: str | None = None
    arguments: str | None = None


class DeltaCustomCall(WireModel):
    name: str | None = None
    input: str | None = None


class DeltaToolCall(WireModel):
    index: int
    id: str | None = None
    # A custom call's deltas carry `custom` and no `type`: the SDK's chunk type allows only "function" there
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None
    custom: DeltaCustomCall | None = None


class ChoiceDelta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    function_call: DeltaFunctionCall | None = None  # legacy `functions` requests only
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatCompletionChunkChoice(WireModel):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"] | None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


# https://platform.openai.com/docs/api-reference/models/object


class ModelCard(WireModel):
    """One card both SDKs read: OpenAI's fields, and Anthropic's (`type`, `display_name`, `created_at`)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local"
    type: Literal["model"] = "model"
    display_name: str = ""
    created_at: str = ""  # RFC 3339

    def model_post_init(self, _context) -> None:
        self.display_name = self.display_name or self.id
        if not self.created_at:
            stamp = datetime.datetime.fromtimestamp(self.created, datetime.UTC)
            self.created_at = stamp.isoformat().replace("+00:00", "Z")


class ModelList(WireModel):
    """OpenAI's list, with Anthropic's paging fields (one page: everything)."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    def model_post_init(self, _context) -> None:
        if self.data:
            self.first_id, self.last_id = self.data[0].id, self.data[-1].id


# https://platform.openai.com/docs/guides/error-codes


class ErrorDetail(WireModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(WireModel):
    error: ErrorDetail


def model_name_of(body: Any) -> str | None:
    """The `model` of a body that is validated later (or relayed as is)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("'model' must be a string.", param="model")
    return name
