"""Finds tool calls in generated text as it streams: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Text outside calls is content; call markup never leaks into it. A call is announced as soon as its name is
complete and its arguments are streamed fragment by fragment, so clients see OpenAI's delta format. The
same parser serves whole responses (fed everything at once), so streamed and whole results always agree.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from chat.grammars import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_NAME_RE = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGUMENTS_RE = re.compile(r'\s*,\s*"(?:arguments|parameters)"\s*:\s*')


@dataclass(frozen=True)
class ContentText:
    text: str


@dataclass(frozen=True)
class CallStarted:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    fragment: str


ParseEvent = ContentText | CallStarted | CallArguments


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class _JsonValueScanner:
    """Tracks where a JSON value ends, one character at a time (strings and escapes aware)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False
        self.done = False

    def push(self, char: str) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
                self.done = self.depth == 0
            return
        if char.isspace() and not self.started:
            return
        self.started = True
        if char == '"':
            self.in_string = True
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            self.depth -= 1
            self.done = self.depth == 0


@dataclass
class _OpenCall:
    body: str = ""
    index: int = -1  # assigned when the name is known
    arguments_start: int = -1
    scanned_to: int = 0
    scanner: _JsonValueScanner = field(default_factory=_JsonValueScanner)
    arguments: str = ""


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str
    complete: bool = False  # its closing marker arrived (a call cut off by max_tokens stays incomplete)


class ToolCallStreamParser:
    def __init__(self) -> None:
        self._text = ""  # content not yet released (may be the start of the open marker)
        self._call: _OpenCall | None = None
        self.calls: list[ParsedCall] = []

    def feed(self, text: str) -> list[ParseEvent]:
        events: list[ParseEvent] = []
        pending = text
        while pending:
            if self._call is None:
                pending = self._feed_text(pending, events)
            else:
                pending = self._feed_call(pending, events)
        return events

    def finish(self) -> list[ParseEvent]:
        """End of generation: release held text; an unterminated call keeps what was streamed of it."""
        events: list[ParseEvent] = []
        if self._call is not None and self._call.index < 0:
            self._close_unannounced(self._call.body, events, complete=False)
        self._call = None
        self._emit_content(self._text, events)
        self._text = ""
        return events

    # ---------------------------------------------------------------- text outside calls

    def _feed_text(self, text: str, events: list[ParseEvent]) -> str:
        buffer = self._text + text
        start = buffer.find(TOOL_CALL_OPEN)
        if start >= 0:
            self._emit_content(buffer[:start], events)
            self._text = ""
            self._call = _OpenCall()
            return buffer[start + len(TOOL_CALL_OPEN) :]
        release = buffer[: len(buffer) - _partial_marker_suffix(buffer, TOOL_CALL_OPEN)]
        if self._is_markup_whitespace(release):
            self._text = buffer  # may separate two calls: release it only if real text follows
            return ""
        self._emit_content(release, events)
        self._text = buffer[len(release) :]
        return ""

    def _is_markup_whitespace(self, text: str) -> bool:
        """Whitespace next to calls is part of the call markup, not content."""
        return bool(self.calls) and not text.strip()

    def _emit_content(self, text: str, events: list[ParseEvent]) -> None:
        if text and not self._is_markup_whitespace(text):
            events.append(ContentText(text))

    # ---------------------------------------------------------------- inside a call

    def _feed_call(self, text: str, events: list[ParseEvent]) -> str:
        call = self._call
        call.body += text
        if call.index < 0:
            self._announce_if_named(call, events)
        if call.index >= 0 and call.arguments_start >= 0:
            self._stream_arguments(call, events)
        end = call.body.find(TOOL_CALL_CLOSE)
        if end < 0:
            return ""
        rest = call.body[end + len(TOOL_CALL_CLOSE) :]
        if call.index < 0:
            self._close_unannounced(call.body[:end], events, complete=True)
        else:
            self.calls[call.index].complete = True
        self._call = None
        return rest

    def _announce_if_named(self, call: _OpenCall, events: list[ParseEvent]) -> None:
        name_match = _NAME_RE.match(call.body)
        if not name_match:
            return
        arguments_match = _ARGUMENTS_RE.match(call.body, name_match.end())
        if not arguments_match:
            return
        call.index = len(self.calls)
        call.arguments_start = call.scanned_to = arguments_match.end()
        parsed = ParsedCall(id=new_call_id(), name=json.loads(f'"{name_match.group(1)}"'), arguments="")
        self.calls.append(parsed)
        events.append(CallStarted(call.index, parsed.id, parsed.name))

    def _stream_arguments(self, call: _OpenCall, events: list[ParseEvent]) -> None:
        scanner = call.scanner
        start = call.scanned_to
        position = start
        while position < len(call.body) and not scanner.done:
            scanner.push(call.body[position])
            position += 1
        fragment = call.body[start:position]
        if not call.arguments:
            fragment = fragment.lstrip()
        call.scanned_to = position
        if fragment:
            call.arguments += fragment
            self.calls[call.index].arguments += fragment
            events.append(CallArguments(call.index, fragment))

    def _close_unannounced(self, body: str, events: list[ParseEvent], *, complete: bool) -> None:
        """A call whose name did not come first (no grammar enforced it): parse it whole, or give it back as text."""
        try:
            data = json.loads(body) if complete else None
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            arguments = data.get("arguments", data.get("parameters", {}))
            index = len(self.calls)
            call = ParsedCall(id=new_call_id(), name=data["name"], arguments=json.dumps(arguments), complete=True)
            self.calls.append(call)
            events += [CallStarted(index, call.id, call.name), CallArguments(index, call.arguments)]
            return
        tail = TOOL_CALL_CLOSE if complete else ""
        events.append(ContentText(TOOL_CALL_OPEN + body + tail))


def _partial_marker_suffix(text: str, marker: str) -> int:
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def parse_tool_calls(text: str) -> tuple[str, list[ParsedCall]]:
    """Whole-text form: (content outside calls, calls)."""
    parser = ToolCallStreamParser()
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentText))
    return content, parser.calls
