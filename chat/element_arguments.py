"""Tool-call arguments written as elements, as MiniMax M3 writes them: each parameter a tag named for it, a mapping's
keys as nested tags, a list's items as `item` tags, every tag after a marker (MiniMax M3's `]<]minimax[>[`):

    ]<]minimax[>[<city>Paris]<]minimax[>[</city>]<]minimax[>[<days>]<]minimax[>[<item>1]<]minimax[>[</item>...

Text is written raw, numbers as text, booleans `true` / `false`; None is left out. `ElementArguments` reads them back
into the JSON object clients get (each value as its schema says: text cannot tell "3" from 3), `elements_rule` writes
the grammar of a tool's parameters and `ElementClosing` the text that closes a call from where the answer stands.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from chat.closing_text import unwritten
from chat.gbnf_text import literal, step_without
from chat.xml_arguments import string_constraints_checked, value_of

ITEM = "item"  # the tag of a list's items


def elements_text(arguments: dict, marker: str) -> str:
    """Arguments as the template writes them."""
    return "".join(f"{marker}<{key}>{_value_text(value, marker)}{marker}</{key}>"
                   for key, value in arguments.items() if value is not None)


def _value_text(value: Any, marker: str) -> str:
    if isinstance(value, dict):
        return elements_text(value, marker)
    if isinstance(value, list):
        return "".join(f"{marker}<{ITEM}>{_value_text(item, marker)}{marker}</{ITEM}>" for item in value)
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _element(text: str, marker: str) -> tuple[str, str, int] | None:
    """The element `text` starts with: (tag, what it holds, its length); None while it is not whole."""
    opening = marker + "<"
    tag_end = text.find(">", len(opening))
    if tag_end < 0:
        return None
    tag = text[len(opening):tag_end]
    inner_start, depth, position = tag_end + 1, 1, tag_end + 1
    opens, closes = f"{marker}<{tag}>", f"{marker}</{tag}>"
    while depth:  # (a nested element of the same name: its closing tag is not this one's)
        next_open, next_close = text.find(opens, position), text.find(closes, position)
        if next_close < 0:
            return None
        if 0 <= next_open < next_close:
            depth, position = depth + 1, next_open + len(opens)
        else:
            depth, position = depth - 1, next_close + len(closes)
    return tag, text[inner_start:position - len(closes)], position


def element_value(text: str, schema: dict | None, marker: str) -> Any:
    """What an element holds, as the JSON value its schema says (nested elements: an object, or a list of items)."""
    schema = schema or {}
    kind = schema.get("type")
    children, position = [], 0
    while text.startswith(marker + "<", position):
        element = _element(text[position:], marker)
        if element is None:
            return text  # (not elements after all: text)
        children.append(element[:2])
        position += element[2]
    if children and position == len(text):
        if kind == "array" or kind != "object" and all(tag == ITEM for tag, _ in children):
            return [element_value(inner, schema.get("items"), marker) for _, inner in children]
        properties = schema.get("properties") or {}
        return {tag: element_value(inner, properties.get(tag), marker) for tag, inner in children}
    if not text and kind in ("array", "object"):
        return [] if kind == "array" else {}
    return value_of(text, kind)


@dataclass
class ElementArguments:
    """Reads one call's parameters as they stream; `feed` returns the JSON fragments of the arguments object they
    make and how much of the text it consumed. The arguments end at the first closing tag that is not a parameter's
    (the call's own, left for the caller)."""

    marker: str
    schemas: dict[str, Any] = field(default_factory=dict)  # parameter -> its schema
    written: int = 0
    done: bool = False
    invalid: bool = False

    def feed(self, buffer: str) -> tuple[list[str], int]:
        out, consumed = [], 0
        opening, closing = self.marker + "<", self.marker + "</"
        while not self.done:
            rest = buffer[consumed:]
            stripped = rest.lstrip()
            if stripped.startswith(closing):
                out.append("}" if self.written else "{}")
                consumed += len(rest) - len(stripped)
                self.done = True
            elif stripped.startswith(opening) and not closing.startswith(stripped):
                element = _element(stripped, self.marker)
                if element is None:
                    break  # its value is still coming
                name, inner, length = element
                value = element_value(inner, self.schemas.get(name), self.marker)
                out.append(("{" if not self.written else ", ") + json.dumps(name) + ": " + json.dumps(value))
                self.written += 1
                consumed += len(rest) - len(stripped) + length
            else:
                break
        return out, consumed

    def waiting(self, buffer: str) -> bool:
        """Whether `buffer` can still become a parameter or the end (else the call is malformed)."""
        stripped = buffer.lstrip()
        opening = self.marker + "<"
        return not stripped or stripped.startswith(opening) or opening.startswith(stripped)


def elements_rule(converter, schema: dict, marker: str, rule: str, strict: bool) -> str:
    """The GBNF of one tool's parameters as elements (declared order, required ones always, the others maybe); adds
    its rules to `converter` (llama-cpp-python's SchemaConverter, for its rule table)."""
    text = converter._add_rule(f"{rule}-text", f"( {step_without(marker)} )*")
    return _fields(converter, schema, _Rules(marker, text, strict), rule)


@dataclass(frozen=True)
class _Rules:
    marker: str
    text: str  # the rule of a text value
    strict: bool


def _fields(converter, schema: dict, rules: _Rules, rule: str) -> str:
    required = set(schema.get("required") or [])
    parts = []
    for index, (name, subschema) in enumerate((schema.get("properties") or {}).items()):
        value = _value(converter, subschema or {}, rules, f"{rule}-{index}", name)
        part = f"{literal(f'{rules.marker}<{name}>')} {value} {literal(f'{rules.marker}</{name}>')}"
        parts.append(part if name in required else f"( {part} )?")
    return converter._add_rule(f"{rule}-fields", " ".join(parts) if parts else '""')


def _value(converter, schema: dict, rules: _Rules, rule: str, name: str) -> str:
    kind = schema.get("type")
    options = schema["enum"] if "enum" in schema else [schema["const"]] if "const" in schema else None
    if options is not None:
        return converter._add_rule(rule, " | ".join(literal(_value_text(option, rules.marker)) for option in options))
    if kind == "integer":
        return converter._add_rule(rule, '"-"? [0-9]+')
    if kind == "number":
        return converter._add_rule(rule, '"-"? [0-9]+ ( "." [0-9]+ )?')
    if kind == "boolean":
        return converter._add_rule(rule, '"true" | "false"')
    if kind == "array":
        item = _value(converter, schema.get("items") or {}, rules, f"{rule}-item", name)
        opening, closing = literal(f"{rules.marker}<{ITEM}>"), literal(f"{rules.marker}</{ITEM}>")
        return converter._add_rule(rule, f"( {opening} {item} {closing} )*")
    if kind == "object":
        return _fields(converter, schema, rules, rule)
    if kind == "string":
        string_constraints_checked(schema, name, rules.strict)
    return rules.text  # (text, and any schema this walk does not know: read back as text)


@dataclass(frozen=True)
class ElementClosing:
    """What closes a call of elements from where the answer stands: the open elements' closing tags, innermost
    first, then the call's and the section's (see chat/xml_arguments.py TagClosing, its counterpart)."""

    marker: str
    call_open: str  # (its last occurrence starts the call being closed)
    tail: str  # the call's and the section's closing tags

    def remaining(self, answer: str) -> str:
        start = answer.rfind(self.call_open.strip())
        call = answer[start + len(self.call_open.strip()):] if start >= 0 else answer
        if call.rstrip().endswith(self.tail.strip()):
            return ""
        stack: list[str] = []
        for match in re.finditer(re.escape(self.marker) + r"<(/?)([^<>]*)>", call):
            if not match.group(1):
                stack.append(match.group(2))
            elif stack and stack[-1] == match.group(2):
                stack.pop()
        target = "".join(f"{self.marker}</{tag}>" for tag in reversed(stack)) + self.tail
        return unwritten(answer, target)
