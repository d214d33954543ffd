"""Builds an Anthropic Messages answer from engine chunks: the stream's events and the final message.

As for Responses, the whole answer is the message the same events built, so a stream and a whole answer cannot
differ. Content blocks open lazily: `thinking` while a thinking model reasons (closed with a signature_delta),
`text` when visible text arrives (whitespace before a tool call opens none), `tool_use` per parsed call, whose
arguments stream as `input_json_delta` fragments that concatenate to its `input`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from api.anthropic.protocol import Message, MessagesUsage, StopReason, tool_use_id
from api.error_responses import anthropic_error_body
from api.pipeline.choice_output import ChoiceOutput
from api.serving import AnswerWriter
from backends.base import GenerationFinished, TokenDelta, Usage
from chat.reasoning import ReasoningText
from chat.tool_call_parser import CallArguments, CallStarted, ContentText, ParseEvent
from errors import ServerError

Event = dict[str, Any]
# Thinking blocks carry a signature clients hand back unchanged; ours says only where the thinking came from.
SIGNATURE = base64.b64encode(b"local-reasoning").decode()

def messages_usage(usage: Usage) -> MessagesUsage:
    return MessagesUsage(input_tokens=usage.prompt_tokens - usage.cached_tokens, output_tokens=usage.completion_tokens,
                         cache_read_input_tokens=usage.cached_tokens)


def stop_reason(finish_reason: str, stop_sequence: str | None) -> StopReason:
    if finish_reason in ("tool_calls", "function_call"):
        return "tool_use"
    if finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence else "end_turn"


class MessagesWriter(AnswerWriter):
    named_events = True  # `event: content_block_delta`

    def __init__(self, message: Message, output: ChoiceOutput) -> None:
        self.message = message
        self.output = output
        self._open: dict | None = None  # the content block being written
        self._held_space = ""  # whitespace not yet known to belong to a text block

    def start(self) -> list[Event]:
        return [{"type": "message_start", "message": self.message.model_dump(mode="json")}, {"type": "ping"}]

    def whole(self) -> dict:
        return self.message.model_dump(mode="json")

    def add(self, index: int, chunk: TokenDelta | GenerationFinished) -> list[Event]:
        if isinstance(chunk, TokenDelta):
            return self._events(self.output.read(chunk.text))
        events = self._events(self.output.finish()) + self._close_block()
        self.message.stop_reason = stop_reason(self.output.finish_reason(chunk.finish_reason), chunk.stop_sequence)
        self.message.stop_sequence = chunk.stop_sequence if self.message.stop_reason == "stop_sequence" else None
        self.message.usage = messages_usage(chunk.usage)
        delta = {"stop_reason": self.message.stop_reason, "stop_sequence": self.message.stop_sequence}
        return events + [{"type": "message_delta", "delta": delta, "usage": self.message.usage.model_dump()}]

    def finish(self) -> list[Event]:
        return [{"type": "message_stop"}]

    def fail(self, error: ServerError) -> list[Event]:
        return [anthropic_error_body(error)]

    # ------------------------------------------------------------ blocks

    def _events(self, parsed: list[ParseEvent | ReasoningText]) -> list[Event]:
        events: list[Event] = []
        for item in parsed:
            if isinstance(item, ReasoningText):
                events += self._delta("thinking", {"type": "thinking_delta", "thinking": item.text})
            elif isinstance(item, ContentText):
                events += self._text(item.text)
            elif isinstance(item, CallStarted):
                self._held_space = ""
                events += self._close_block()
                events += self._start_block({"type": "tool_use", "id": tool_use_id(item.id), "name": item.name,
                                             "input": {}})
                self._open["partial"] = ""
            elif isinstance(item, CallArguments) and self._open and self._open["type"] == "tool_use":
                self._open["partial"] += item.fragment
                events.append(self._delta_event({"type": "input_json_delta", "partial_json": item.fragment}))
        return events

    def _text(self, text: str) -> list[Event]:
        if (self._open is None or self._open["type"] != "text") and not (self._held_space + text).strip():
            self._held_space += text
            return []
        text, self._held_space = self._held_space + text, ""
        return self._delta("text", {"type": "text_delta", "text": text})

    def _delta(self, kind: str, delta: dict) -> list[Event]:
        """Add to the open block of `kind`, opening one (and closing another) first if needed."""
        events: list[Event] = []
        if self._open is None or self._open["type"] != kind:
            events += self._close_block()
            events += self._start_block({"type": "text", "text": ""} if kind == "text"
                                        else {"type": "thinking", "thinking": "", "signature": ""})
        self._open[kind] += delta[kind]
        return events + [self._delta_event(delta)]

    def _start_block(self, block: dict) -> list[Event]:
        self._open = dict(block)
        self.message.content.append(self._open)
        return [{"type": "content_block_start", "index": len(self.message.content) - 1, "content_block": block}]

    def _delta_event(self, delta: dict) -> Event:
        return {"type": "content_block_delta", "index": len(self.message.content) - 1, "delta": delta}

    def _close_block(self) -> list[Event]:
        block, self._open = self._open, None
        if block is None:
            return []
        events = []
        if block["type"] == "thinking":
            block["signature"] = SIGNATURE
            events.append(self._delta_event({"type": "signature_delta", "signature": SIGNATURE}))
        if block["type"] == "tool_use":
            block["input"] = _arguments(block.pop("partial"))
        return events + [{"type": "content_block_stop", "index": len(self.message.content) - 1}]


def _arguments(text: str) -> dict:
    """A call's input object; a call cut off by max_tokens (its JSON unfinished) keeps an empty input."""
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {"value": value}
