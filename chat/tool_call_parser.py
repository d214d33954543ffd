"""Finds tool calls in generated text as it streams, in any `ToolCallFormat` (hermes `<tool_call>`, mistral
`[TOOL_CALLS]`, llama3 / generic bare JSON, and the formats that write the name outside the JSON: mistral-v7,
deepseek, functionary).

Text outside calls is content; call markup never leaks into it. A call is announced as soon as its name is
complete and its arguments are streamed fragment by fragment, so clients see OpenAI's delta format. The
same parser serves whole responses (fed everything at once), so streamed and whole results always agree.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from chat.element_arguments import ElementArguments
from chat.gemma_arguments import GemmaArguments
from chat.python_arguments import PythonArguments
from chat.tool_formats import HERMES, ToolCallFormat
from chat.xml_arguments import XmlArguments

_JSON_TEXT = r'"((?:[^"\\]|\\.)*)"'


def _name_re(call_format: ToolCallFormat) -> re.Pattern:
    """The start of a call's JSON object up to its name (after its id, where the format writes one first)."""
    if call_format.name_as_key:  # (Apertus: `{"name": {...}}`, the arguments right after the name's colon)
        return re.compile(rf'\s*\{{\s*{_JSON_TEXT}\s*:')
    call_id = rf'"{call_format.id_key}"\s*:\s*{_JSON_TEXT}\s*,\s*' if call_format.id_key else ""
    return re.compile(rf'\s*\{{\s*{call_id}"{call_format.name_key}"\s*:\s*{_JSON_TEXT}')


_ARGUMENTS_RE = re.compile(r'\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_NOTHING = re.compile(r"\s*")
_RECIPIENT = re.compile(r"[A-Za-z_][\w.\-]*")


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

    def scan(self, text: str, start: int = 0) -> int:
        """Read `text` from `start` until the value ends (or the text does); where reading stopped."""
        position = start
        while position < len(text) and not self.done:
            self.push(text[position])
            position += 1
        return position


@dataclass
class _OpenCall:
    body: str = ""  # the call's JSON object text so far
    index: int = -1  # assigned when the name is known
    object_scanner: _JsonValueScanner = field(default_factory=_JsonValueScanner)
    arguments_start: int = -1
    scanned_to: int = 0
    arguments_scanner: _JsonValueScanner = field(default_factory=_JsonValueScanner)
    arguments: str = ""


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str
    complete: bool = False  # its JSON object closed (a call cut off by max_tokens stays incomplete)


# Everything the model may write before the first call that could still become `{"name"` (bare JSON formats).
_JSON_START_PREFIX_RE = re.compile(r'\s*(?:\{\s*(?:"(?:n(?:a(?:m(?:e)?)?)?)?)?)?')
_JSON_START_RE = re.compile(r'\s*\{\s*"name"')


class ToolCallStreamParser:
    """Splits a stream of generated text into content and calls, for one `ToolCallFormat`.

    States: free text (watching for a marker that opens calls, and for a message header that is never content), between
    calls (markup and whitespace are skipped), inside a call: its JSON object, or (formats that write the name outside it) its name, then its
    arguments as JSON or in another notation (XML-like tags, elements, Gemma 4's, Python's: a reader per notation). Decisions
    only ever depend on the text seen so far, and text that could still become a marker is held back, so any
    chunking of the same text gives the same result.
    """

    def __init__(self, call_format: ToolCallFormat = HERMES,
                 parameter_types: dict[str, dict[str, Any]] | None = None) -> None:
        """`parameter_types`: tool -> parameter -> its schema, to read XML-like parameter values (qwen-xml)."""
        self.format = call_format
        self._parameter_types = parameter_types or {}
        self._notation: XmlArguments | GemmaArguments | PythonArguments | ElementArguments | None = None
        self._name_re = _name_re(call_format)
        self._markers = call_format.entry_markers
        self._content_markup = call_format.content_markup
        self._header_open = call_format.recipient_header[:1]  # (muse's ` to=`: a header naming a recipient follows)
        self._between_markup = tuple(dict.fromkeys(call_format.markup + self._markers))
        self._buffer = ""  # text received but not yet consumed by the current state
        self._state = "recipient" if call_format.content_recipient else "text"  # (the prompt opened a recipient)
        self._at_start = call_format.json_at_start  # nothing but whitespace seen yet: a bare call may begin
        self._call: _OpenCall | None = None
        self.calls: list[ParsedCall] = []

    def feed(self, text: str) -> list[ParseEvent]:
        events: list[ParseEvent] = []
        self._buffer += text
        step = {"text": self._in_text, "between": self._between_calls, "call": self._in_call, "name": self._in_name,
                "arguments": self._in_arguments, "notation": self._in_notation, "recipient": self._in_recipient,
                "header": self._in_message_header}
        while self._buffer and step[self._state](events):
            pass
        return events

    def finish(self) -> list[ParseEvent]:
        """End of generation: release held text. An unterminated call keeps what was streamed of it; one cut off
        before its name was complete is dropped (it began after a call marker, so it was never content)."""
        events: list[ParseEvent] = []
        if self._state in ("text", "recipient"):  # (a recipient never finished was text)
            self._emit_content(self._buffer, events)
        if self._state == "header":  # (so was a header never closed)
            self._emit_content(self._header_open[0] + self._buffer, events)
        self._buffer, self._call, self._state = "", None, "text"
        return events

    @staticmethod
    def _emit_content(text: str, events: list[ParseEvent]) -> None:
        if text:
            events.append(ContentText(text))

    # ---------------------------------------------------------------- free text

    def _in_text(self, events: list[ParseEvent]) -> bool:
        """Returns True when the state changed and the rest of the buffer should be read in the new one."""
        buffer = self._buffer
        if self._at_start:
            match = _JSON_START_RE.match(buffer)
            if match:
                self._buffer = buffer[buffer.index("{") :]
                self._open_call()
                return True
            if _JSON_START_PREFIX_RE.fullmatch(buffer):
                return False  # still only whitespace or the beginning of `{"name"`
            self._at_start = False
        watched = self._markers + self._content_markup + self._header_open
        found = [(buffer.find(m), m) for m in watched if m in buffer]
        if found:
            position, marker = min(found)
            self._emit_content(buffer[:position], events)
            self._buffer = buffer[position + len(marker) :]
            if marker in self._header_open:
                self._state = "header"
                return True
            if marker in self._content_markup and marker not in self._markers:
                return True  # a header that is never content: dropped, still in text
            self._state = "name" if self.format.names_outside and marker == self.format.call_open else "between"
            if self.format.content_recipient and marker == self.format.call_open:
                self._state = "recipient"
            return True
        held = max((_partial_marker_suffix(buffer, m) for m in watched), default=0)
        self._emit_content(buffer[: len(buffer) - held], events)
        self._buffer = buffer[len(buffer) - held :]
        return False

    # ---------------------------------------------------------------- between calls

    def _between_calls(self, events: list[ParseEvent]) -> bool:
        self._buffer = self._buffer.lstrip()
        buffer = self._buffer
        if not buffer:
            return False
        opener = self.format.call_open.lstrip()  # (whitespace before it was just skipped: harmony's " to=")
        if self.format.names_outside and opener and buffer.startswith(opener):
            self._buffer = buffer[len(opener):]
            self._state = "recipient" if self.format.content_recipient else "name"
            return True
        if buffer.startswith("{") and not self.format.names_outside:
            self._open_call()
            return True
        for markup in self._between_markup:
            if buffer.startswith(markup):
                self._buffer = buffer[len(markup) :]
                if markup == self.format.section_close.strip():
                    self._state, self._at_start = "text", False  # the calls are over: text again
                return True
        if any(markup.startswith(buffer) for markup in (*self._between_markup, opener) if markup):
            return False  # may be the start of a marker
        if self.format.names_outside and not opener:  # (pythonic: a call starts with its bare name)
            self._state = "name"
            return True
        self._state = "text"  # the calls are over; what follows is content again
        self._at_start = False
        return True

    # ---------------------------------------------------------------- inside a call

    def _open_call(self) -> None:
        self._state = "call"
        self._at_start = False
        self._call = _OpenCall()

    def _in_call(self, events: list[ParseEvent]) -> bool:
        call = self._call
        consumed = call.object_scanner.scan(self._buffer)
        call.body += self._buffer[:consumed]
        self._buffer = self._buffer[consumed:]
        if call.index < 0:
            self._announce_if_named(call, events)
        if call.index >= 0:
            self._stream_arguments(call, events)
        if not call.object_scanner.done:
            return False
        if call.index < 0:
            self._close_unannounced(call.body, events)
        else:
            self.calls[call.index].complete = True
        self._call = None
        self._state = "between"
        return True

    # ---------------------------------------------------------------- name outside the JSON (mistral-v7, ...)

    def _in_name(self, events: list[ParseEvent]) -> bool:
        """After call_open: the name, up to name_close; then the arguments' JSON value."""
        fmt = self.format
        head, found, rest = self._name_and_rest(self._buffer)
        if not found:
            return False  # the name goes on (a call cut off here is dropped at the end: never content)
        name = head.strip().removeprefix(fmt.name_open.strip()).split("[CALL_ID]")[0].strip()  # (Mistral 3.2's id)
        if fmt.call_index:  # (Kimi K2's `functions.name:0`)
            before, after = map(re.escape, fmt.call_index.split("{}"))
            name = re.sub(rf"{before}\d+{after}$", "", name)
        if fmt.id_before_name:
            name = name.rsplit(fmt.id_before_name, 1)[-1].strip()  # (Solar's `ID<|tool_call:name|>name`)
        index = len(self.calls)
        self.calls.append(ParsedCall(id=new_call_id(), name=name, arguments=""))
        events.append(CallStarted(index, self.calls[index].id, name))
        self._call = _OpenCall(index=index)
        self._buffer, self._state = rest, "arguments"
        if fmt.element_marker:
            self._notation = ElementArguments(fmt.element_marker, self._parameter_types.get(name, {}))
            self._state = "notation"
        elif fmt.xml_parameters is not None:
            self._notation = XmlArguments(fmt.xml_parameters, self._parameter_types.get(name, {}))
            self._state = "notation"
        elif fmt.gemma_arguments:
            self._notation, self._state = GemmaArguments(), "notation"
        elif fmt.python_arguments:
            self._notation, self._state = PythonArguments(), "notation"
        return True

    def _in_recipient(self, events: list[ParseEvent]) -> bool:
        """A recipient format's message header (Functionary 3.2): a tool's name opens a call, the text recipient
        (`all`) opens content; what cannot be a recipient was content all along (a model that skipped the header)."""
        head, found, rest = self._buffer.partition(self.format.name_close)
        name = head.strip()
        if not (_RECIPIENT.fullmatch(name) or not found and not name):
            self._state = "text"
            return True
        if not found:
            return False  # the name goes on
        if name == self.format.content_recipient:
            self._buffer, self._state = rest, "text"
        else:
            self._state = "name"
        return True

    def _in_message_header(self, events: list[ParseEvent]) -> bool:
        """After a header's opening (muse's ` to=`): a recipient's name, then the header's close, are never content
        (whatever follows is read as usual: text, or calls); anything else was text all along."""
        opening, closing = self.format.recipient_header
        name = _RECIPIENT.match(self._buffer)
        rest = self._buffer[name.end() if name else 0:]
        if rest.startswith(closing):
            self._buffer, self._state = rest[len(closing):], "text"
            return True
        if closing.startswith(rest):
            return False  # the name or the closing goes on
        self._emit_content(opening, events)
        self._state = "text"
        return True

    def _name_and_rest(self, buffer: str) -> tuple[str, bool, str]:
        """The call's name, whether it is whole, and the text after it: up to name_close, or where the parameters
        (or the call's end) start in a format whose name has no closing marker of its own (GLM)."""
        fmt = self.format
        if fmt.name_close:
            head, found, rest = buffer.partition(fmt.name_close)
            return head, bool(found), rest
        if fmt.gemma_arguments:  # (Gemma 4: the name ends where its arguments' object opens)
            at = buffer.find("{")
            return (buffer[:at], True, buffer[at:]) if at >= 0 else (buffer, False, "")
        markers = (fmt.xml_parameters.open.strip(), fmt.xml_parameters.end.strip())
        at = min((index for marker in markers if (index := buffer.find(marker)) >= 0), default=-1)
        return (buffer[:at], True, buffer[at:]) if at >= 0 else (buffer, False, "")

    def _in_notation(self, events: list[ParseEvent]) -> bool:
        """Arguments that are not JSON (XML-like parameters, Gemma 4's or Python's notation): their reader turns them
        into fragments of the arguments' JSON object as they complete."""
        call = self._call
        fragments, consumed = self._notation.feed(self._buffer)
        self._buffer = self._buffer[consumed:]
        for fragment in fragments:
            self._emit_arguments(call, fragment, events)
        if self._notation.done:
            self.calls[call.index].complete = not self._notation.invalid
        elif self._notation.waiting(self._buffer):
            return False
        self._call, self._notation, self._state = None, None, "between"  # whole, or malformed (left incomplete)
        return True

    def _in_arguments(self, events: list[ParseEvent]) -> bool:
        call = self._call
        consumed = call.arguments_scanner.scan(self._buffer)
        self._emit_arguments(call, self._buffer[:consumed], events)
        self._buffer = self._buffer[consumed:]
        if not call.arguments_scanner.done:
            return False
        self.calls[call.index].complete = True
        self._call, self._state = None, "between"
        return True

    def _announce_if_named(self, call: _OpenCall, events: list[ParseEvent]) -> None:
        name_match = self._name_re.match(call.body)
        if not name_match:
            return
        arguments_match = (_NOTHING if self.format.name_as_key else _ARGUMENTS_RE).match(call.body, name_match.end())
        if not arguments_match or not call.body[arguments_match.end() :].lstrip()[:1]:
            return
        if call.body[arguments_match.end() :].lstrip()[0] not in '{["':
            return  # a scalar "arguments" value is read whole when the object closes
        call.index = len(self.calls)
        call.arguments_start = call.scanned_to = arguments_match.end()
        parsed = ParsedCall(id=new_call_id(), name=json.loads(f'"{name_match.group(name_match.lastindex)}"'),
                            arguments="")
        self.calls.append(parsed)
        events.append(CallStarted(call.index, parsed.id, parsed.name))

    def _stream_arguments(self, call: _OpenCall, events: list[ParseEvent]) -> None:
        start = call.scanned_to
        call.scanned_to = call.arguments_scanner.scan(call.body, start)
        self._emit_arguments(call, call.body[start:call.scanned_to], events)

    def _emit_arguments(self, call: _OpenCall, fragment: str, events: list[ParseEvent]) -> None:
        """The next piece of a call's arguments, streamed (leading whitespace before the value is not its)."""
        if not call.arguments:
            fragment = fragment.lstrip()
        if fragment:
            call.arguments += fragment
            self.calls[call.index].arguments += fragment
            events.append(CallArguments(call.index, fragment))

    def _close_unannounced(self, body: str, events: list[ParseEvent]) -> None:
        """A call whose name did not come first (no grammar enforced it): parse it whole, or give it back as text."""
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            data = None
        if self.format.name_as_key and isinstance(data, dict) and len(data) == 1:
            data = {"name": next(iter(data)), "arguments": next(iter(data.values()))}
            name = data["name"]
        else:
            name = data.get(self.format.name_key) if isinstance(data, dict) else None
        has_arguments = isinstance(data, dict) and ("arguments" in data or "parameters" in data)
        if has_arguments and isinstance(name, str):
            arguments = data.get("arguments", data.get("parameters"))
            index = len(self.calls)
            call = ParsedCall(id=new_call_id(), name=name, arguments=json.dumps(arguments), complete=True)
            self.calls.append(call)
            events += [CallStarted(index, call.id, call.name), CallArguments(index, call.arguments)]
            return
        events.append(ContentText(body))


def _partial_marker_suffix(text: str, marker: str) -> int:
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def parse_tool_calls(text: str, call_format: ToolCallFormat = HERMES,
                     parameter_types: dict[str, dict[str, Any]] | None = None) -> tuple[str, list[ParsedCall]]:
    """Whole-text form: (content outside calls, calls)."""
    parser = ToolCallStreamParser(call_format, parameter_types)
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentText))
    return content, parser.calls
