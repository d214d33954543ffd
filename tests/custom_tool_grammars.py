"""The custom-tool grammars the tests share: a small patch format in Lark (as `apply_patch` takes) and a date regex,
with the checks that a tool's input is in their language (by `lark` and `re`, not by our own conversion)."""

from __future__ import annotations

import re

import lark

PATCH_GRAMMAR = r"""
start: begin_patch hunk~1..2 end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?
hunk: add_hunk | delete_hunk
add_hunk: "*** Add File: " filename LF add_line~1..3
delete_hunk: "*** Delete File: " filename LF
add_line: "+" /[^\n]{1,40}/ LF
filename: /[A-Za-z0-9_.\/-]{1,24}/
%import common.LF
"""
DATE_REGEX = r"\d{4}-\d{2}-\d{2}"


def chat_custom_tool(name: str, syntax: str, definition: str, description: str) -> dict:
    return {"type": "custom", "custom": {"name": name, "description": description, "format": {
        "type": "grammar", "grammar": {"syntax": syntax, "definition": definition}}}}


CHAT_CUSTOM_TOOLS = [
    chat_custom_tool("apply_patch", "lark", PATCH_GRAMMAR, "Edit files by applying a patch."),
    chat_custom_tool("pick_date", "regex", DATE_REGEX, "Pick a calendar date."),
]
RESPONSES_CUSTOM_TOOLS = [
    {"type": "custom", "name": tool["custom"]["name"], "description": tool["custom"]["description"],
     "format": {"type": "grammar", **tool["custom"]["format"]["grammar"]}}
    for tool in CHAT_CUSTOM_TOOLS
]


def assert_in_language(tool_name: str, text: str) -> None:
    if tool_name == "apply_patch":
        lark.Lark(PATCH_GRAMMAR).parse(text)  # raises on anything outside the grammar
    else:
        assert re.fullmatch(DATE_REGEX, text), text
