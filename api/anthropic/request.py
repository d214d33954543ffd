"""An Anthropic Messages request -> the equivalent chat completion request, so it runs through the same
templates, grammars, prompt cache and scheduler as chat (and reaches remote upstreams through the chat path).

System entries inside `messages` (Claude Code sends its environment and hook output that way) are kept where
they are: their text joins the nearest user turn (the one just before it, else the next one), ahead of the
user's own words, so the model reads the context and then what it is asked. Templates only take a system
message first, so this keeps every word, keeps the conversation's order, leaves earlier turns unchanged (the
prompt cache still holds the conversation's prefix) and never makes two user turns in a row. System entries
before any turn join the system prompt.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from api.anthropic.protocol import CountTokensRequest, MessagesRequest
from api.pipeline.param_names import spelled_as_sent
from api.protocol import ChatCompletionRequest
from chat.media import chat_image_part
from errors import InvalidRequest

logger = logging.getLogger(__name__)

_MEDIA = {"image", "document", "search_result"}
_SERVER_SIDE = {"server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                "mcp_tool_use", "mcp_tool_result", "container_upload"}


def _block_text(block: Any, where: str) -> str:
    """A text block's text; media blocks are a 400 naming the block."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return block.get("text") or ""
    if kind in _MEDIA:
        raise InvalidRequest(f"Content blocks of type '{kind}' are not supported by this model; only text is.",
                             param=f"{where}.type")
    raise InvalidRequest(f"Content blocks of type '{kind}' are not allowed here.", param=f"{where}.type")


def _image_part(block: dict, where: str) -> dict:
    """An image block as the chat content part the engine reads (base64 -> a data: URL)."""
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return chat_image_part(f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}", where)
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return chat_image_part(source["url"], where)
    raise InvalidRequest("An image block's source must be base64 data or a url.", param=f"{where}.source")


def _joined(parts: list[str | dict]) -> str | list[dict]:
    """Text stays a string; with images, chat content parts in order."""
    if all(isinstance(part, str) for part in parts):
        return "".join(parts)
    return [{"type": "text", "text": part} if isinstance(part, str) else part for part in parts]


def _prepend(text: str, content: str | list[dict]) -> str | list[dict]:
    if isinstance(content, str):
        return f"{text}\n\n{content}"
    return [{"type": "text", "text": f"{text}\n\n"}, *content]


def _text_of(content: Any, param: str) -> str:
    """String content, or the text of its text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a string or a list of content blocks.", param=param)
    return "".join(_block_text(block, f"{param}[{index}]") for index, block in enumerate(content))


def _blocks(message: dict, param: str) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest("'content' must be a string or a list of content blocks.", param=f"{param}.content")
    return content


def _user_turn(blocks: list[dict], param: str) -> list[dict]:
    """Tool results become tool messages (in order, first), the rest one user message."""
    turn, parts = [], []
    for index, block in enumerate(blocks):
        where = f"{param}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            text = _text_of(block.get("content") or "", f"{where}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            turn.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""), "content": text})
        elif kind == "image":
            parts.append(_image_part(block, where))
        else:
            parts.append(_block_text(block, where))
    if parts or not turn:
        turn.append({"role": "user", "content": _joined(parts)})
    return turn


def _assistant_turn(blocks: list[dict], param: str) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    texts, calls, thinking = [], [], []
    for index, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id") or ""), "type": "function", "function": {
                "name": str(block.get("name") or ""), "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "redacted_thinking" or kind in _SERVER_SIDE:
            logger.debug("Dropping a %s block from the history: nothing a local template can render", kind)
        else:
            raise InvalidRequest(f"Content blocks of type '{kind}' are not allowed in assistant turns.",
                                 param=f"{param}.content[{index}].type")
    message["content"] = "".join(texts)
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


def _system_text(system: str | list[dict] | None, param: str = "system") -> str:
    return "" if system is None else _text_of(system, param)


def chat_messages(body: MessagesRequest | CountTokensRequest) -> list[dict]:
    messages: list[dict] = []
    top_system = [_system_text(body.system)] if body.system else []
    pending: list[str] = []  # system entries waiting for the next user turn
    for index, message in enumerate(body.messages):
        param = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            text = _text_of(message.get("content") or "", f"{param}.content")
            if not messages:
                top_system.append(text)
            elif messages[-1]["role"] == "user":  # context for that turn: before the user's own words
                messages[-1]["content"] = _prepend(text, messages[-1]["content"])
            else:
                pending.append(text)
        elif role == "user":
            turn = _user_turn(_blocks(message, param), param)
            if pending and turn[-1]["role"] == "user":
                turn[-1]["content"] = _prepend("\n\n".join(pending), turn[-1]["content"])
                pending = []
            messages += turn
        elif role == "assistant":
            messages.append(_assistant_turn(_blocks(message, param), param))
        else:
            raise InvalidRequest(f"Messages with role '{role}' are not supported.", param=f"{param}.role")
    if pending:
        messages.append({"role": "user", "content": "\n\n".join(pending)})
    if top_system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(t for t in top_system if t)})
    return messages


def _chat_tools(tools: list[dict] | None) -> list[dict] | None:
    if not tools:
        return None
    chat_tools = []
    for index, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):  # Anthropic's server tools (web_search...): ours cannot run them
            logger.warning("Ignoring tool %r of type %r: server tools are not available here", tool.get("name"),
                           tool.get("type"))
            continue
        if not tool.get("name"):
            raise InvalidRequest("A tool needs a 'name'.", param=f"tools[{index}].name")
        function = {"name": tool["name"], "description": tool.get("description"),
                    "parameters": tool.get("input_schema") or {"type": "object"},
                    "strict": True if tool.get("strict") is True else None}
        chat_tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    return chat_tools or None


def _tool_choice(choice: dict | None, have_tools: bool) -> tuple[Any, bool | None]:
    """(chat tool_choice, parallel_tool_calls)."""
    if not choice:
        return None, None
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return (kind if have_tools else None), parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool":
        if not choice.get("name"):
            raise InvalidRequest("tool_choice of type 'tool' needs a 'name'.", param="tool_choice.name")
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise InvalidRequest(f"tool_choice type '{kind}' is not supported; use auto, any, tool or none.",
                         param="tool_choice.type")


def _response_format(body: MessagesRequest, calls_tools: bool) -> dict | None:
    """`output_config.format` (or the structured-outputs beta's top-level `output_format`) -> a strict json_schema
    response_format. Strict because Anthropic promises every keyword of the schema holds: one the grammar cannot
    enforce is a 400 naming it, as for a strict chat schema."""
    nested = (body.output_config or {}).get("format")
    if nested is not None and body.output_format is not None:
        raise InvalidRequest("Send the output format once: as 'output_config.format' or as 'output_format'.",
                             param="output_format")
    output_format, param = (nested, "output_config.format") if nested is not None else (body.output_format,
                                                                                       "output_format")
    if output_format is None:
        return None
    kind = output_format.get("type") if isinstance(output_format, dict) else None
    if kind != "json_schema":
        raise InvalidRequest(f"Output format type '{kind}' is not supported; use 'json_schema'.", param=f"{param}.type")
    if not isinstance(output_format.get("schema"), dict):
        raise InvalidRequest("A json_schema output format needs a 'schema' object.", param=f"{param}.schema")
    if calls_tools:
        # The answer is constrained by one grammar: either the tool calls' or the schema's, not a choice of both.
        raise InvalidRequest(f"'{param}' cannot be combined with tools on this server unless tool_choice is "
                             "{'type': 'none'}.", param=param)
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": output_format["schema"], "strict": True}}


def reasoning_fields(thinking: dict | None, output_config: dict | None = None) -> dict[str, Any]:
    """`thinking` -> the reasoning controls: enabled with budget_tokens -> reasoning_budget, disabled -> off;
    `output_config.effort` (Claude Code) -> reasoning_effort."""
    fields: dict[str, Any] = {}
    effort = (output_config or {}).get("effort")
    if effort in ("low", "medium", "high"):
        fields["reasoning_effort"] = effort
    kind = (thinking or {}).get("type")
    if kind == "enabled" and isinstance(thinking.get("budget_tokens"), int):
        fields["reasoning_budget"] = thinking["budget_tokens"]
    elif kind == "disabled":
        fields["reasoning_effort"] = "none"
    return fields


def _conversation_fields(body: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    """What shapes the prompt: messages, tools and tool choice, thinking."""
    tools = _chat_tools(body.tools)
    choice, parallel = _tool_choice(body.tool_choice, tools is not None)
    return {"model": body.model, "messages": chat_messages(body), "tools": tools,
            "tool_choice": choice if tools else None, "parallel_tool_calls": parallel if tools else None,
            **reasoning_fields(body.thinking, getattr(body, "output_config", None))}


def to_chat_request(body: MessagesRequest) -> ChatCompletionRequest:
    conversation = _conversation_fields(body)
    chat = {
        **conversation,
        "response_format": _response_format(body, calls_tools=bool(conversation["tools"])
                                            and conversation["tool_choice"] != "none"),
        # A final assistant message is a prefill: the answer starts with it (Anthropic's semantics)
        "continue_final_message": True if conversation["messages"][-1]["role"] == "assistant" else None,
        "max_tokens": body.max_tokens,
        "stop": body.stop_sequences or None,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "stream": body.stream,
        # A remote upstream sends usage at the end of its stream only when asked (message_delta needs it).
        "stream_options": {"include_usage": True} if body.stream else None,
        "keep_alive": (body.model_extra or {}).get("keep_alive"),
    }
    return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})


def count_request(body: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request a Messages request with these fields renders to (for counting its prompt)."""
    chat = _conversation_fields(body)
    return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})


_PARAM_NAMES = [
    (re.compile(r"^stop$"), "stop_sequences"),
    (re.compile(r"^tools\[(\d+)\]\.function\.parameters"), r"tools[\1].input_schema"),
    (re.compile(r"^tools\[(\d+)\]\.function\."), r"tools[\1]."),
    (re.compile(r"^reasoning_budget$"), "thinking.budget_tokens"),
    (re.compile(r"^response_format\.json_schema\.schema"), "output_config.format.schema"),
    (re.compile(r"^response_format"), "output_config.format"),
]


def messages_param_names():
    """Errors from the shared chat path name the field as the Messages client spelled it."""
    return spelled_as_sent(_PARAM_NAMES)
