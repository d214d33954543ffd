"""Tool-call arguments in Gemma 4's notation instead of JSON, as its chat template writes them:

    <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>

Keys are bare (in sorted order: the template sorts them), text sits between `<|"|>` markers (raw: no escapes), other
values are written as JSON writes them, lists in brackets, objects in braces. `GemmaArguments` reads a call's object
back into the JSON clients get (whole, when its closing brace comes); `gemma_object_rule` writes the grammar that
makes it valid by construction from the tool's JSON schema; `GemmaClosing` tells budget closing what closes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chat.closing_text import unwritten
from chat.gbnf_text import literal, step_without
from chat.notation_grammar import Notation, value_rule

QUOTE = '<|"|>'
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_BARE = re.compile(r"[^,:{}\[\]<]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*")


def gemma_text(value: Any) -> str:
    """A value in Gemma 4's notation (what its template writes for a call's arguments)."""
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_key(key)}:{gemma_text(item)}" for key, item in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(gemma_text(item) for item in value) + "]"
    return "null" if value is None else json.dumps(value)


def _key(key: str) -> str:
    """A key as the template writes it, bare; one that cannot be bare (`:`, `,`, brackets...) quoted like text."""
    return key if _IDENTIFIER.fullmatch(key) else QUOTE + key + QUOTE


def value_end(text: str) -> int | None:
    """Where the object or list `text` starts with closes (the index after it); None while it is still open."""
    depth, position = 0, 0
    while position < len(text):
        if text.startswith(QUOTE, position):
            closing = text.find(QUOTE, position + len(QUOTE))
            if closing < 0:
                return None
            position = closing + len(QUOTE)
            continue
        char = text[position]
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        position += 1
        if depth == 0:
            return position
    return None


def parse_value(text: str) -> Any:
    """The Python value of one value in Gemma 4's notation (ValueError when it is not one)."""
    value, end = _value(text, 0)
    if text[end:].strip():
        raise ValueError(f"text after the value: {text[end:]!r}")
    return value


def _value(text: str, position: int) -> tuple[Any, int]:
    position = _skip_space(text, position)
    if text.startswith(QUOTE, position):
        closing = text.find(QUOTE, position + len(QUOTE))
        if closing < 0:
            raise ValueError("unterminated text")
        return text[position + len(QUOTE):closing], closing + len(QUOTE)
    if text.startswith("{", position):
        return _object(text, position + 1)
    if text.startswith("[", position):
        return _list(text, position + 1)
    for word, value in (("true", True), ("false", False), ("null", None), ("None", None)):
        if text.startswith(word, position):
            return value, position + len(word)
    number = _NUMBER.match(text, position)
    if number:
        return json.loads(number.group(0)), number.end()
    bare = _BARE.match(text, position)  # (a model's unquoted word: read as text)
    if bare:
        return bare.group(0).strip(), bare.end()
    raise ValueError(f"no value at {text[position:position + 20]!r}")


def _object(text: str, position: int) -> tuple[dict, int]:
    pairs, position = _items(text, position, "}", _member)
    return dict(pairs), position


def _member(text: str, position: int) -> tuple[tuple[str, Any], int]:
    position = _skip_space(text, position)
    if text.startswith(QUOTE, position):  # (keys of nested objects may be quoted)
        key, position = _value(text, position)
    else:
        colon = text.find(":", position)
        if colon < 0:
            raise ValueError("a key without its value")
        key, position = text[position:colon].strip(), colon
    position = _skip_space(text, position)
    if not text.startswith(":", position):
        raise ValueError("a key without its value")
    value, position = _value(text, position + 1)
    return (key, value), position


def _list(text: str, position: int) -> tuple[list, int]:
    return _items(text, position, "]", _value)


def _items(text: str, position: int, close: str, read_item) -> tuple[list, int]:
    """The items of a list or object up to its closing bracket, each read by `read_item`, comma-separated."""
    items: list[Any] = []
    position = _skip_space(text, position)
    if text.startswith(close, position):
        return items, position + 1
    while True:
        item, position = read_item(text, position)
        items.append(item)
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position += 1
        elif text.startswith(close, position):
            return items, position + 1
        else:
            raise ValueError(f"no {close!r} where the items end")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


@dataclass
class GemmaArguments:
    """Reads one call's arguments object as it streams: the JSON object, whole, once its closing brace came."""

    done: bool = False
    invalid: bool = False  # its object closed but is not Gemma's notation: the call stays incomplete

    def feed(self, buffer: str) -> tuple[list[str], int]:
        stripped = buffer.lstrip()
        if self.done or not stripped.startswith("{"):
            return [], 0
        end = value_end(stripped)
        if end is None:
            return [], 0
        self.done = True
        consumed = len(buffer) - len(stripped) + end
        try:
            return [json.dumps(parse_value(stripped[:end]), ensure_ascii=False)], consumed
        except ValueError:
            self.invalid = True
            return [], consumed

    @staticmethod
    def waiting(buffer: str) -> bool:
        stripped = buffer.lstrip()
        return not stripped or stripped.startswith("{")


# ---------------------------------------------------------------- grammar

GEMMA_NOTATION = Notation(
    prefix="gemma",
    rules={
        "gemma-value": 'gemma-string | gemma-number | gemma-object | gemma-list | "true" | "false" | "null"',
        "gemma-string": f"{literal(QUOTE)} ( {step_without(QUOTE)} )* {literal(QUOTE)}",
        "gemma-number": r'"-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
        "gemma-key": r"[a-zA-Z_] [a-zA-Z0-9_\-.]*",
        "gemma-object": '"{" ( gemma-field ( "," gemma-field )* )? "}"',
        "gemma-field": '( gemma-key | gemma-string ) ":" gemma-value',
        "gemma-list": '"[" ( gemma-value ( "," gemma-value )* )? "]"',
    },
    text_of=gemma_text,
    member=lambda key: _key(key) + ":",
    sorted_keys=True,  # (the template's `dictsort`)
)


def gemma_object_rule(converter, schema: dict, rule: str) -> str:
    """The rule of a call's arguments object in Gemma 4's notation (chat/notation_grammar.py)."""
    return value_rule(converter, GEMMA_NOTATION, schema, rule)


# ---------------------------------------------------------------- budget closing


@dataclass(frozen=True)
class GemmaClosing:
    """What closes a Gemma 4 call from where the answer stands: the open text, the open lists and objects, the
    call's end marker (see chat/xml_arguments.py TagClosing, its counterpart for XML-like calls)."""

    call_open: str
    call_close: str

    def remaining(self, answer: str) -> str:
        start = answer.rfind(self.call_open)
        if start < 0:
            return self.call_close
        call = answer[start + len(self.call_open):]
        if self.call_close in call:
            return ""
        stack, position, inside = [], 0, False
        while position < len(call):
            if call.startswith(QUOTE, position):
                inside, position = not inside, position + len(QUOTE)
                continue
            char = call[position]
            if not inside and char in "{[":
                stack.append("}" if char == "{" else "]")
            elif not inside and char in "}]" and stack:
                stack.pop()
            position += 1
        target = (QUOTE if inside else "") + "".join(reversed(stack)) + self.call_close
        return unwritten(answer, target)
