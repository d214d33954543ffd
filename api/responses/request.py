"""Turns a Responses API request into the chat completion request the engines already serve.

One path for both APIs means the same chat template, tool-call grammar, JSON-schema grammar, sampling and
prompt cache. Every Responses field is mapped, or refused with a 400 that names it. A `previous_response_id`
or a `conversation` arrives here as the stored items it continues (`history`, read by the routes from
state/response_store.py or state/conversation_store.py); item references are refused.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from api.pipeline.param_names import spelled_as_sent
from api.protocol import ChatCompletionRequest
from api.responses.protocol import ResponsesRequest, ResponsesTool, new_item_id
from chat.media import chat_image_part
from errors import InvalidRequest

logger = logging.getLogger(__name__)

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# OpenAI's hosted tools: they run on OpenAI's side, so a local model can never call them.
HOSTED_TOOLS = {"web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation",
                "computer_use_preview", "mcp", "local_shell"}
_TEXT_PARTS = {"input_text", "output_text", "text"}


def check_response_limits(body: ResponsesRequest, max_tokens_limit: int, max_messages: int) -> None:
    """The operator's per-request caps (`--max-tokens-limit`, `--max-messages`), before any model is touched."""
    if max_tokens_limit and body.max_output_tokens is not None and body.max_output_tokens > max_tokens_limit:
        raise InvalidRequest(f"max_output_tokens may be at most {max_tokens_limit} on this server.",
                             param="max_output_tokens")
    if isinstance(body.input, list) and len(body.input) > max_messages:
        raise InvalidRequest(f"At most {max_messages} input items per request on this server.", param="input")


def conversation_id(body: ResponsesRequest) -> str | None:
    """The conversation a turn continues and is added to: an id, or {"id": ...}."""
    given = body.conversation
    if given is None:
        return None
    if isinstance(given, dict):
        given = given.get("id")
    if not isinstance(given, str) or not given:
        raise InvalidRequest("'conversation' is a conversation id or {\"id\": ...}.", param="conversation")
    if body.previous_response_id:
        raise InvalidRequest("'conversation' and 'previous_response_id' cannot be used together.",
                             param="conversation")
    return given


def _refuse_stateful(body: ResponsesRequest) -> None:
    conversation_id(body)
    if body.background and (body.store is False or body.stream):
        raise InvalidRequest("'background' responses are stored and polled: not with store: false or stream.",
                             param="background")
    if body.truncation == "auto":
        raise InvalidRequest("truncation 'auto' is not supported: a conversation longer than the context is a 400.",
                             param="truncation")
    unknown = sorted(set(body.reasoning or {}) - {"effort", "summary", "generate_summary"})
    if unknown:
        raise InvalidRequest(f"reasoning.{unknown[0]} is not supported.", param=f"reasoning.{unknown[0]}")
    if (body.reasoning or {}).get("summary"):
        logger.warning("Ignoring reasoning.summary: reasoning is returned as reasoning_text, not summarised")


def _part_text(part: Any, param: str) -> str:
    if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        raise InvalidRequest(f"Content parts of type '{kind}' are not supported by this model; only text parts are.",
                             param=f"{param}.type")
    text = part.get("text")
    if not isinstance(text, str):
        raise InvalidRequest("A text content part needs a string 'text'.", param=f"{param}.text")
    return text


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a string or a list of content parts.", param=param)
    return "".join(_part_text(part, f"{param}[{index}]") for index, part in enumerate(content))


def _message_content(content: Any, param: str) -> str | list[dict]:
    """A message's text; with `input_image` parts, chat content parts in order (the engine reads the images)."""
    if not isinstance(content, list) or not any(isinstance(p, dict) and p.get("type") == "input_image"
                                                for p in content):
        return _content_text(content, param)
    parts: list[dict] = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if isinstance(part, dict) and part.get("type") == "input_image":
            if not isinstance(part.get("image_url"), str):
                raise InvalidRequest("An input_image needs an 'image_url' (file_id is not supported here).",
                                     param=f"{where}.image_url")
            parts.append(chat_image_part(part["image_url"], where))
        else:
            parts.append({"type": "text", "text": _part_text(part, where)})
    return parts


def _required_string(item: dict, key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string.", param=f"{param}.{key}")
    return value


def _history_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    """A function_call or custom_tool_call item as the chat call it was."""
    call_id, name = _required_string(item, "call_id", param), _required_string(item, "name", param)
    if item["type"] == "custom_tool_call":
        return {"id": call_id, "type": "custom", "custom": {"name": name, "input": _required_string(item, "input", param)}}
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": _required_string(item, "arguments", param)}}


def check_input_items(items: list[Any], param: str) -> None:
    """Items kept for later turns (a conversation's) are checked when given, as a turn would read them."""
    try:
        _chat_messages(items, allow_empty=True)
    except InvalidRequest as exc:
        where = param + exc.param[len("input"):] if exc.param and exc.param.startswith("input") else param
        raise InvalidRequest(exc.message, param=where) from exc


def _chat_messages(items: list[dict[str, Any]], allow_empty: bool = False) -> list[dict[str, Any]]:
    """Input items -> chat messages. Consecutive function_call items become one assistant message's tool_calls."""
    messages: list[dict[str, Any]] = []
    thinking = ""  # a reasoning item's text, for the assistant turn that follows it
    for index, item in enumerate(items):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest("Each input item must be an object.", param=param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"Input messages with role '{role}' are not supported.", param=f"{param}.role")
            messages.append({"role": role, "content": _message_content(item.get("content"), f"{param}.content")})
            if role == "assistant" and thinking:
                messages[-1]["reasoning_content"], thinking = thinking, ""
        elif kind in ("function_call", "custom_tool_call"):
            call = _history_call(item, param)
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant":  # the same assistant turn: its text, then its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            if thinking:
                messages[-1]["reasoning_content"], thinking = thinking, ""
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            text = output if isinstance(output, str) else _content_text(output, f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": _required_string(item, "call_id", param), "content": text})
        elif kind == "reasoning":  # its text goes back to templates that render past thinking
            parts = (item.get("content") or []) + (item.get("summary") or [])
            thinking += "".join(part.get("text") or "" for part in parts if isinstance(part, dict))
        else:
            reason = "this server stores no items" if kind == "item_reference" else "not supported by this server"
            raise InvalidRequest(f"Input items of type '{kind}' are {reason}.", param=f"{param}.type")
    if not messages and not allow_empty:
        raise InvalidRequest("'input' must contain at least one message.", param="input")
    return messages


def _flat_tools(tools: list[ResponsesTool]) -> list[tuple[str, ResponsesTool]]:
    """(param, tool) for every tool, a `namespace`'s own tools (Codex groups some that way) in its place."""
    flat = []
    for index, tool in enumerate(tools):
        if tool.type == "namespace":
            members = (tool.model_extra or {}).get("tools") or []
            flat += [(f"tools[{index}].tools[{i}]", ResponsesTool.model_validate(member))
                     for i, member in enumerate(members)]
        else:
            flat.append((f"tools[{index}]", tool))
    return flat


def _chat_tools(body: ResponsesRequest) -> list[dict[str, Any]] | None:
    if body.tools is None:
        return None
    tools = []
    for param, tool in _flat_tools(body.tools):
        if tool.type in HOSTED_TOOLS:  # clients (Codex) list them by default: refusing would stop them cold
            logger.warning("Ignoring the hosted tool %r: it does not run on this server", tool.type)
            continue
        if tool.type not in ("function", "custom"):
            raise InvalidRequest(f"Tools of type '{tool.type}' are not supported; only 'function' and 'custom' tools "
                                 "are.", param=f"{param}.type")
        if not tool.name:
            raise InvalidRequest(f"A {tool.type} tool needs a 'name'.", param=f"{param}.name")
        if tool.type == "custom":
            tools.append(_chat_custom_tool(tool, param))
            continue
        function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters,
                    "strict": tool.strict}
        tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    return tools or None  # only hosted tools: as if none were sent


def _chat_custom_tool(tool: ResponsesTool, param: str) -> dict[str, Any]:
    """Responses' `format: {"type": "grammar", "syntax", "definition"}` is chat's `{"type": "grammar", "grammar":
    {"syntax", "definition"}}`."""
    given = tool.format
    if given is not None and given.get("type") == "grammar":
        if given.get("syntax") not in ("lark", "regex") or not isinstance(given.get("definition"), str):
            raise InvalidRequest("A grammar format needs 'syntax' ('lark' or 'regex') and a string 'definition'.",
                                 param=f"{param}.format")
        given = {"type": "grammar", "grammar": {"syntax": given["syntax"], "definition": given["definition"]}}
    elif given is not None and given.get("type") != "text":
        raise InvalidRequest("A custom tool's format is {'type': 'text'} or {'type': 'grammar', ...}.",
                             param=f"{param}.format")
    custom = {"name": tool.name, "description": tool.description, "format": given}
    return {"type": "custom", "custom": {key: value for key, value in custom.items() if value is not None}}


def _chat_tool_choice(body: ResponsesRequest) -> Any:
    choice = body.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if choice.type == "custom" and choice.name:
        return {"type": "custom", "custom": {"name": choice.name}}
    if choice.type != "function" or not choice.name:
        raise InvalidRequest(f"tool_choice of type '{choice.type}' is not supported; use 'none', 'auto', "
                             "'required', {'type': 'function', 'name': ...} or {'type': 'custom', 'name': ...}.",
                             param="tool_choice")
    return {"type": "function", "function": {"name": choice.name}}


def _chat_response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    text_format = body.text.format if body.text else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return {"type": "json_object"}
    if not text_format.name:
        raise InvalidRequest("A json_schema text format needs a 'name'.", param="text.format.name")
    return {"type": "json_schema", "json_schema": {
        "name": text_format.name, "schema": text_format.schema_, "strict": text_format.strict}}


def wants_logprobs(body: ResponsesRequest) -> bool:
    return LOGPROBS_INCLUDE in (body.include or [])


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """This turn's input as items (a string input is one user message), each with an id, as stored."""
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": body.input}]}] \
        if isinstance(body.input, str) else [dict(item) for item in body.input]
    for item in items:
        if isinstance(item, dict) and "id" not in item:
            item["id"] = new_item_id("msg" if item.get("type", "message") == "message" else "item")
    return items


def to_chat_request(body: ResponsesRequest, history: list[dict[str, Any]] = ()) -> ChatCompletionRequest:
    """`history`: the stored conversation `previous_response_id` continues (its inputs and outputs, oldest first)."""
    _refuse_stateful(body)
    unknown_includes = sorted(set(body.include or []) - {LOGPROBS_INCLUDE})
    if unknown_includes:  # extra data we never produce (Codex always asks reasoning.encrypted_content): say so
        logger.warning("Nothing to include for %s: reasoning is returned as plain text and no built-in tools run "
                       "here", unknown_includes)
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    messages = _chat_messages([*history, *items], allow_empty=body.generate is False)  # (a warm-up: tools alone)
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    tools, choice = _chat_tools(body), _chat_tool_choice(body)
    chat = {
        "model": body.model,
        "messages": messages,
        "max_completion_tokens": body.max_output_tokens,
        "tools": tools,
        "tool_choice": choice if tools else None,
        "parallel_tool_calls": body.parallel_tool_calls if tools else None,
        "response_format": _chat_response_format(body),
        "logprobs": wants_logprobs(body) or None,
        "top_logprobs": body.top_logprobs if wants_logprobs(body) else None,
        "stream": body.stream,
        "reasoning_effort": (body.reasoning or {}).get("effort"),
    }
    for name in ("temperature", "top_p", "seed", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty", "logit_bias", "reasoning_budget", "chat_template_kwargs"):
        chat[name] = getattr(body, name)
    return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})


# Chat-side names of the fields the shared chat path may refuse, as a Responses client spelled them.
_PARAM_NAMES = [
    (re.compile(r"^response_format\.json_schema\.schema"), "text.format.schema"),
    (re.compile(r"^response_format.*"), "text.format"),
    (re.compile(r"^tools\[(\d+)\]\.function\."), r"tools[\1]."),
    (re.compile(r"^tools\[(\d+)\]\.custom\.format.*"), r"tools[\1].format"),
    (re.compile(r"^max_(completion_)?tokens$"), "max_output_tokens"),  # (engines name it max_tokens)
    (re.compile(r"^messages\b.*"), "input"),
    (re.compile(r"^logprobs$"), "include"),
    (re.compile(r"^reasoning_effort$"), "reasoning.effort"),
]


def responses_param_names():
    """Errors from the shared chat path name the Responses field the client sent, not its chat twin."""
    return spelled_as_sent(_PARAM_NAMES)
