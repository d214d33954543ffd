"""OpenAI's custom tools (GPT-5's freeform tools such as `apply_patch`): the model's call is raw text, free or in the
language of a Lark or regex grammar, not JSON arguments.

Inside the prompt and the call format a custom tool is a function tool with one string parameter, `input`, so every
chat template renders it and every call format carries it; its description tells the model the grammar. The grammar
becomes GBNF (chat/text_grammar.py) that constrains that string's content: JSON-escaped inside the JSON string of
JSON call formats, raw in XML-like ones. Answers turn the call back into the custom call clients expect, its input
decoded from the JSON string as it streams (`InputDecoder`).

Why GBNF and not llguidance (which OpenAI's Lark dialect comes from): every grammar here, tool calls, schemas and
reasoning budgets alike, runs in llama.cpp's grammar sampler and in xgrammar, which both take GBNF, and the custom
tool's language has to be embedded inside a call format's markup. llguidance would mean a second constraint engine
with its own token masks in both backends, for one kind of tool.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chat.lark_syntax import lark_grammar
from chat.regex_syntax import regex_node
from chat.text_grammar import GbnfWriter, TextGrammar, check
from errors import InvalidRequest

INPUT_KEY = "input"
_START = "0start"


@dataclass(frozen=True)
class CustomInput:
    """What a custom tool's input must be: free text (`grammar` None) or the language of a checked grammar."""

    syntax: str  # "text", "lark" or "regex"
    definition: str = ""
    grammar: TextGrammar | None = None

    def parameters(self) -> dict[str, Any]:
        """The JSON schema the prompt shows: one string parameter, described by the grammar."""
        described = {"text": "The tool's input: free text.",
                     "lark": f"The tool's input, raw text that follows this Lark grammar:\n{self.definition}",
                     "regex": f"The tool's input, raw text that fully matches this regular expression: "
                              f"{self.definition}"}[self.syntax]
        return {"type": "object", "properties": {INPUT_KEY: {"type": "string", "description": described}},
                "required": [INPUT_KEY]}

    def rules(self, prefix: str, json_escaped: bool) -> tuple[str, dict[str, str]]:
        """(the rule of the input's text, every rule as name -> GBNF body), names under `prefix`."""
        writer = GbnfWriter(prefix, json_escaped)
        return writer.write(self.grammar), writer.rules


def custom_input(format_: Any, param: str) -> CustomInput:
    """A custom tool's `format` (chat's shape: `{"type": "grammar", "grammar": {"syntax", "definition"}}`), checked
    and compiled: a grammar that cannot be enforced is a 400 naming the construct."""
    if format_ is None or format_.get("type") == "text":
        return CustomInput("text")
    grammar = format_.get("grammar") or {}
    syntax, definition = grammar.get("syntax"), grammar.get("definition")
    if format_.get("type") != "grammar" or syntax not in ("lark", "regex") or not isinstance(definition, str):
        raise InvalidRequest("A custom tool's format is {'type': 'text'} or {'type': 'grammar', 'grammar': "
                             "{'syntax': 'lark' | 'regex', 'definition': ...}}.", param=param)
    if syntax == "regex":
        compiled = TextGrammar({_START: regex_node(definition, param)}, _START)
    else:
        compiled = lark_grammar(definition, param)
    check(compiled, param)
    return CustomInput(syntax, definition, compiled)


_VALUE_START = re.compile(r'\s*\{\s*"' + INPUT_KEY + r'"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class InputDecoder:
    """A custom call's input, decoded from its arguments (`{"input": "..."}`) fragment by fragment: each `feed`
    returns the text newly complete (an escape split across fragments waits for its end)."""

    def __init__(self) -> None:
        self.text = ""  # the input decoded so far
        self._raw = ""
        self._at: int | None = None  # where the string's next character is, once its opening quote was read
        self.done = False

    def feed(self, fragment: str) -> str:
        self._raw += fragment
        if self._at is None:
            start = _VALUE_START.match(self._raw)
            if start is None:
                return ""
            self._at = start.end()
        pieces = []
        while self._at < len(self._raw) and not self.done:
            char = self._raw[self._at]
            if char == '"':
                self.done = True
            elif char != "\\":
                pieces.append(char)
                self._at += 1
            else:
                escaped = self._escape()
                if escaped is None:
                    break
                pieces.append(escaped)
        piece = "".join(pieces)
        self.text += piece
        return piece

    def _escape(self) -> str | None:
        """The escape at `_at`, stepping over it; None while it is still incomplete."""
        raw, at = self._raw, self._at
        if at + 1 >= len(raw):
            return None
        if raw[at + 1] != "u":
            self._at += 2
            return _ESCAPES.get(raw[at + 1], raw[at + 1])
        if at + 6 > len(raw):
            return None
        code = int(raw[at + 2:at + 6], 16)
        if 0xD800 <= code < 0xDC00:  # a surrogate pair: both halves make one character
            if at + 12 > len(raw):
                return None
            low = int(raw[at + 8:at + 12], 16)
            self._at += 12
            return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
        self._at += 6
        return chr(code)


def input_of(arguments: str) -> str:
    """A whole call's input, from its arguments."""
    try:
        value = json.loads(arguments).get(INPUT_KEY)
    except (json.JSONDecodeError, AttributeError):
        value = None
    return value if isinstance(value, str) else ""
