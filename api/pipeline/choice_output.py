"""Reading one choice's generated text, for every API: reasoning apart from the content, and tool calls parsed
out of the content when tools are active. Each API wing writes what this reads in its own wire format."""

from __future__ import annotations

from chat.reasoning import ReasoningSplitter, ReasoningText
from chat.tool_call_parser import ContentText, ParsedCall, ParseEvent, ToolCallStreamParser
from chat.tool_formats import HERMES, ToolCallFormat
from chat.tools import ToolPlan
from chat.xml_arguments import parameter_types


class ChoiceOutput:
    """Reads one choice's generated text: reasoning (with a `splitter`), content, and tool calls when tools are
    active. Call markup inside reasoning is never a call: only content reaches the call parser."""

    def __init__(self, plan: ToolPlan, call_format: ToolCallFormat = HERMES,
                 splitter: ReasoningSplitter | None = None) -> None:
        self.plan = plan
        self.parser = ToolCallStreamParser(call_format, parameter_types(plan.tools)) if plan.active else None
        self.splitter = splitter

    def read(self, text: str) -> list[ParseEvent | ReasoningText]:
        if self.splitter is None:
            return self._content(text)
        return self._split(self.splitter.feed(text))

    def finish(self) -> list[ParseEvent | ReasoningText]:
        events = self._split(self.splitter.finish()) if self.splitter else []
        return events + (self.parser.finish() if self.parser else [])

    def _split(self, parts: list[tuple[bool, str]]) -> list[ParseEvent | ReasoningText]:
        events: list[ParseEvent | ReasoningText] = []
        for is_reasoning, text in parts:
            events += [ReasoningText(text)] if is_reasoning else self._content(text)
        return events

    def _content(self, text: str) -> list[ParseEvent]:
        if self.parser is None:
            return [ContentText(text)] if text else []
        return self.parser.feed(text)

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
