"""The textual shapes in which models write tool calls, and which one a given chat template teaches.

Every format is a sequence of JSON objects `{"name": ..., "<arguments key>": {...}}` wrapped in literal markers,
so one parser, one grammar builder and one history writer serve them all:

- hermes  `<tool_call>{"name": ..., "arguments": ...}</tool_call>` per call (Qwen 2.5/3, Hermes, our default
  tool prompt);
- mistral `[TOOL_CALLS][{"name": ..., "arguments": ...}, ...]` (Mistral 7B v0.3, Nemo, Mixtral templates);
- llama3  `{"name": ..., "parameters": ...}` as the whole answer, optionally after `<|python_tag|>` (Llama 3.1+);
- generic `{"name": ..., "arguments": ...}` as the whole answer (templates that take `tools` but name no format).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    section_open: str = ""  # opens the block of calls, anywhere in the output ("" = no such marker)
    call_open: str = ""  # before each call
    call_close: str = ""  # after each call
    list_open: str = ""  # after the section marker, before the first call
    separator: str = "\n"  # between calls
    section_close: str = ""  # closes the block of calls
    arguments_key: str = "arguments"
    json_at_start: bool = False  # a bare `{"name"` at the very start of the output also opens the calls
    optional_prefix: str = ""  # a marker the model may put before bare calls (llama3's <|python_tag|>)

    @property
    def entry_markers(self) -> tuple[str, ...]:
        """Literals that switch from free text to calls wherever they appear."""
        return tuple(m for m in (self.section_open or self.call_open, self.optional_prefix) if m)

    @property
    def markup(self) -> tuple[str, ...]:
        """Literals between and around calls that are never content."""
        pieces = (self.list_open, self.call_open, self.call_close, self.separator.strip(), self.section_close)
        return tuple(m for m in pieces if m)

    @property
    def preserved_tokens(self) -> tuple[str, ...]:
        """Markers some vocabularies hold as special tokens, which engines must still show as text."""
        return tuple(m for m in (self.section_open, self.call_open, self.call_close, self.optional_prefix) if m)

    def lazy_triggers(self) -> tuple[str, ...]:
        """Regexes over the generated text (full match) whose first group starts the calls (tool_choice auto)."""
        triggers = [rf"[\s\S]*?({re.escape(marker)})[\s\S]*" for marker in self.entry_markers]
        if self.json_at_start:
            triggers.append(r'\s*(\{\s*"name")[\s\S]*')
        return tuple(triggers)

    def render_calls(self, calls: list[tuple[str, Any]]) -> str:
        """Calls from the conversation history, written the way the model itself writes them."""
        objects = [
            self.call_open + json.dumps({"name": name, self.arguments_key: arguments}, ensure_ascii=False) + self.call_close
            for name, arguments in calls
        ]
        return self.section_open + self.list_open + self.separator.join(objects) + self.section_close


HERMES = ToolCallFormat("hermes", call_open="<tool_call>", call_close="</tool_call>")
MISTRAL = ToolCallFormat("mistral", section_open="[TOOL_CALLS]", list_open="[", separator=", ", section_close="]")
LLAMA3 = ToolCallFormat("llama3", arguments_key="parameters", json_at_start=True, optional_prefix="<|python_tag|>")
GENERIC = ToolCallFormat("generic", json_at_start=True)
FORMATS = (HERMES, MISTRAL, LLAMA3, GENERIC)


def detect_tool_call_format(template_source: str) -> ToolCallFormat:
    """The format a chat template (or tool prompt) teaches, recognised by the markers it writes."""
    if "<tool_call>" in template_source:
        return HERMES
    if "[TOOL_CALLS]" in template_source:
        return MISTRAL
    if "<|python_tag|>" in template_source or '"parameters": ' in template_source or "<|start_header_id|>" in template_source:
        return LLAMA3
    return GENERIC
