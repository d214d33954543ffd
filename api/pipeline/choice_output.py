"""Reading one choice's generated text, for every API: reasoning apart from the content, and tool calls parsed
out of the content when tools are active. Each API wing writes what this reads in its own wire format."""

from __future__ import annotations

from dataclasses import dataclass

from chat.custom_tools import InputDecoder
from chat.reasoning import ReasoningSplitter, ReasoningText
from chat.tool_call_parser import CallArguments, CallStarted, ContentText, ParsedCall, ParseEvent, ToolCallStreamParser
from chat.tool_formats import HERMES, ToolCallFormat
from chat.tools import ToolPlan
from chat.xml_arguments import parameter_types


@dataclass(frozen=True)
class CustomCallStarted:
    """A call of a custom tool began (its input follows as `CustomCallInput`, never as JSON arguments)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CustomCallInput:
    index: int
    fragment: str  # the next piece of the raw input


OutputEvent = ParseEvent | CustomCallStarted | CustomCallInput | ReasoningText


class ChoiceOutput:
    """Reads one choice's generated text: reasoning (with a `splitter`), content, and tool calls when tools are
    active. Call markup inside reasoning is never a call: only content reaches the call parser."""

    def __init__(self, plan: ToolPlan, call_format: ToolCallFormat = HERMES,
                 splitter: ReasoningSplitter | None = None) -> None:
        self.plan = plan
        self.parser = ToolCallStreamParser(call_format, parameter_types(plan.tools)) if plan.active else None
        self.splitter = splitter
        self._custom_names = {tool.name for tool in plan.tools if tool.custom is not None} if plan.active else set()
        self._inputs: dict[int, InputDecoder] = {}  # a custom call's input, by the call's index

    def read(self, text: str) -> list[OutputEvent]:
        if self.splitter is None:
            return self._content(text)
        return self._split(self.splitter.feed(text))

    def finish(self) -> list[OutputEvent]:
        events = self._split(self.splitter.finish()) if self.splitter else []
        return events + (self._custom_calls(self.parser.finish()) if self.parser else [])

    def _split(self, parts: list[tuple[bool, str]]) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        for is_reasoning, text in parts:
            events += [ReasoningText(text)] if is_reasoning else self._content(text)
        return events

    def _content(self, text: str) -> list[OutputEvent]:
        if self.parser is None:
            return [ContentText(text)] if text else []
        return self._custom_calls(self.parser.feed(text))

    def _custom_calls(self, events: list[ParseEvent]) -> list[OutputEvent]:
        """Calls of custom tools as their raw input, decoded from the `{"input": ...}` arguments as they stream."""
        if not self._custom_names:
            return events
        result: list[OutputEvent] = []
        for event in events:
            if isinstance(event, CallStarted) and event.name in self._custom_names:
                self._inputs[event.index] = InputDecoder()
                result.append(CustomCallStarted(event.index, event.id, event.name))
            elif isinstance(event, CallArguments) and event.index in self._inputs:
                fragment = self._inputs[event.index].feed(event.fragment)
                result += [CustomCallInput(event.index, fragment)] if fragment else []
            else:
                result.append(event)
        return result

    def custom_input(self, call: ParsedCall) -> str | None:
        """A custom tool's call: its input (None: the call is a function's)."""
        index = next((i for i, parsed in enumerate(self.calls) if parsed is call), None)
        decoder = self._inputs.get(index)
        return decoder.text if decoder is not None else None

    @property
    def calls(self) -> list[ParsedCall]:
        return self.parser.calls if self.parser else []

    def finish_reason(self, engine_reason: str) -> str:
        # Only a finished call makes it a tool call: a call cut off (stop string, length) is never returned. Calls
        # that are all whole are the answer even where the budget ended it (budget closing closed the last one):
        # clients look for `tool_calls` to run them.
        calls = self.calls
        whole = bool(calls) and all(call.complete for call in calls)
        if (engine_reason == "stop" and any(call.complete for call in calls)) or (engine_reason == "length" and whole):
            return "function_call" if self.plan.legacy else "tool_calls"
        return engine_reason
