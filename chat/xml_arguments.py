"""Tool-call arguments written as XML-like parameters instead of a JSON object, as the Qwen3-Coder family writes
them (Qwen3-Coder, Qwen 3.5, Nemotron 3, StepFun 3.5):

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

A string value is the raw text between the tags; any other value is its JSON (the templates write mappings and
lists with `tojson`, numbers and booleans as text). `XmlArguments` reads them back into the JSON object clients
get, converting each value by its parameter's schema type; `xml_call_rules` writes the grammar that makes a call
valid by construction (a string value is any text without the closing tag, other values follow their schema).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from chat.closing_text import unwritten
from chat.gbnf_text import literal, step_without
from errors import InvalidRequest

logger = logging.getLogger(__name__)

STRING_CONSTRAINTS = ("minLength", "maxLength", "pattern", "format")
TYPE = "{type}"  # in a name_close: the value's JSON type (Kimi K3 writes `type="number"` before a number)
NON_STRING_TYPES = ("number", "boolean", "null", "object", "array")


def json_type(value: Any) -> str:
    """A value's JSON type, as a `TYPE` attribute names it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "string" if isinstance(value, str) else "object" if isinstance(value, dict) else "array"


@dataclass(frozen=True)
class XmlParameters:
    open: str  # before a parameter's name
    name_close: str  # between its name and its value (with `TYPE` where the format names the value's type)
    close: str  # after its value
    end: str  # after the last parameter: the function's closing tag
    # set: what a string value's name is closed with instead (DeepSeek V3.2's DSML says `string="true"` there)
    string_name_close: str = ""

    def name_close_for(self, kind: str) -> str:
        """What closes a parameter's name before a value of this JSON type."""
        if kind == "string" and self.string_name_close:
            return self.string_name_close
        return self.name_close.replace(TYPE, kind)

    def between(self) -> str:
        """Regex of the text between a name and its value, with any whitespace between tags (GLM's copies differ
        in it) and either of the two closings where strings have their own; a written type is its group `type`."""
        closings = dict.fromkeys(close for close in (self.name_close, self.string_name_close) if close)
        return "(?:" + "|".join(r"\s*".join(map(re.escape, _between_tags(close))).replace(
            re.escape(TYPE), "(?P<type>[a-z]+)") for close in closings) + ")"


@dataclass(frozen=True)
class TagClosing:
    """How budget closing ends an answer of XML-like calls: a string value is any text but its closing tag, so the
    brackets and quotes that close JSON close nothing here. The text that closes the answer from where it stands is
    the value's closing tag when it is inside a value, then the function's and the call's; budget closing steers the
    model along it token by token (backends/answer_steering.py)."""

    value_start: str  # regex: the text just before a value
    value_close: str  # after a value
    tail: str  # after the last parameter: the function's and the call's closing tags

    def remaining(self, answer: str) -> str:
        """The closing text still to write after `answer` (empty: the call is closed; the answer may end)."""
        last_start = max((match.end() for match in re.finditer(self.value_start, answer)), default=-1)
        inside = last_start > answer.rfind(self.value_close.strip())
        target = (self.value_close if inside else "") + self.tail
        return unwritten(answer, target)


def tag_closing(syntax: XmlParameters, call_close: str, section_close: str) -> TagClosing:
    start = re.escape(syntax.open.strip()) + r"[^<>]*?" + syntax.between()
    return TagClosing(value_start=start, value_close=syntax.close, tail=syntax.end + call_close + section_close)


def _between_tags(name_close: str) -> list[str]:
    """The tags between a parameter's name and its value (GLM: `</arg_key>`, `<arg_value>`; Qwen: `>`)."""
    return re.split(r"\s+|(?<=>)(?=<)", name_close.strip())


def parameter_types(tools) -> dict[str, dict[str, Any]]:
    """tool name -> parameter name -> its JSON schema (its type is what a value's text is read as; MiniMax M3's
    nested elements read the types within it)."""
    return {tool.name: {name: schema or {} for name, schema in
                        ((tool.parameters or {}).get("properties") or {}).items()} for tool in tools}


def value_of(text: str, schema_type: Any) -> Any:
    """A parameter's text as the JSON value its schema type says (text that does not parse stays a string)."""
    types = schema_type if isinstance(schema_type, list) else [schema_type]
    if types == ["string"] or schema_type is None and not text.strip().startswith(("{", "[")):
        return text
    if "boolean" in types and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class XmlArguments:
    """Reads one call's parameters as they stream; `feed` returns the JSON fragments of the arguments object they
    make and how much of the text it consumed."""

    syntax: XmlParameters
    types: dict[str, Any]  # parameter -> its schema
    written: int = 0  # parameters emitted so far
    done: bool = False
    invalid: bool = False  # (never: a malformed parameter leaves the call incomplete instead)

    def feed(self, buffer: str) -> tuple[list[str], int]:
        """Fragments of the arguments JSON and the characters of `buffer` consumed (the rest waits for more)."""
        out, consumed = [], 0
        while not self.done:
            rest = buffer[consumed:]
            stripped = rest.lstrip()
            skipped = len(rest) - len(stripped)
            opener, end = self.syntax.open.strip(), self.syntax.end.strip()
            if stripped.startswith(end):
                out.append("}" if self.written else "{}")
                consumed += skipped + len(end)
                self.done = True
            elif stripped.startswith(opener):
                parameter = self._parameter(stripped[len(opener):])
                if parameter is None:
                    break  # its value is still coming
                name, value, length = parameter
                out.append(("{" if not self.written else ", ") + json.dumps(name) + ": " + json.dumps(value))
                self.written += 1
                consumed += skipped + len(opener) + length
            else:
                break  # not enough text yet, or something else: the caller decides
        return out, consumed

    def _parameter(self, text: str) -> tuple[str, Any, int] | None:
        # (the tags between a name and its value with any whitespace between them: GLM's copies differ in it)
        name_match = re.search(self.syntax.between(), text)
        value_end = text.find(self.syntax.close.strip(), name_match.end()) if name_match else -1
        if name_match is None or value_end < 0:
            return None
        name = text[:name_match.start()].strip()
        raw = text[name_match.end():value_end]
        raw = raw.removeprefix("\n").removesuffix("\n")  # the line breaks around a value are the format's
        if raw.startswith("<![CDATA[") and raw.endswith("]]>"):  # (MiniCPM 5 wraps text with `<`, `&` or lines)
            raw = raw[len("<![CDATA["):-len("]]>")]
        # (the schema's type first; else the type the format wrote, where it writes one)
        schema_type = (self.types.get(name) or {}).get("type") or name_match.groupdict().get("type")
        return name, value_of(raw, schema_type), value_end + len(self.syntax.close.strip())

    def waiting(self, buffer: str) -> bool:
        """Whether `buffer` can still become a parameter or the end (else the call is malformed)."""
        stripped = buffer.lstrip()
        opener, end = self.syntax.open.strip(), self.syntax.end.strip()
        return not stripped or stripped.startswith(opener) or opener.startswith(stripped) or end.startswith(stripped)


def string_constraints_checked(schema: dict, name: str, strict: bool) -> None:
    """A text value is any text but its closing tag: a strict tool's constraints on it cannot be kept (a 400),
    another's are left out with a warning."""
    unenforced = [key for key in STRING_CONSTRAINTS if key in schema]
    if unenforced and strict:
        raise InvalidRequest(f"'{unenforced[0]}' on a string parameter cannot be enforced in this model's "
                             f"XML call format (parameter '{name}').", param="tools")
    if unenforced:
        logger.warning("%s of parameter %r is not enforced in the XML call format", unenforced, name)


def parameters_rule(converter, schema: dict, syntax: XmlParameters, rule: str, strict: bool) -> str:
    """The GBNF of one tool's parameters (declared order, required ones always, the others optional); adds the
    rules of non-string values to `converter` (llama-cpp-python's SchemaConverter)."""
    # A value ends at the first closing tag, newline or not, as the parser reads it (the line break before the tag
    # is the value's last character then, and the parser drops it): the grammar must agree, or a value could hold
    # a `</parameter>` the parser takes for its end.
    terminator = syntax.close.lstrip()
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    parts = []
    for index, (name, subschema) in enumerate(properties.items()):
        subschema = subschema or {}
        value = f"{rule}-{index}"
        is_string = subschema.get("type") == "string" or bool(subschema.get("enum")) and all(
            isinstance(option, str) for option in subschema["enum"])
        if subschema.get("type") == "string" and "enum" not in subschema:
            string_constraints_checked(subschema, name, strict)
            converter._add_rule(value, f"( {step_without(terminator)} )*")
        elif "enum" in subschema and all(isinstance(option, str) for option in subschema["enum"]):
            converter._add_rule(value, " | ".join(json.dumps(option) for option in subschema["enum"]))
        else:
            reference = converter.visit(subschema, value)
            if reference != value:  # (a primitive: the converter's shared rule)
                converter._add_rule(value, reference)
        line_break = f"{literal(syntax.close[:-len(terminator)])}? " if len(syntax.close) > len(terminator) else ""
        kinds = ["string"] if is_string else _non_string_types(subschema)
        closings = " | ".join(dict.fromkeys(literal(syntax.open + name + syntax.name_close_for(kind)) for kind in kinds))
        part = f"( {closings} ) {value} {line_break}{literal(terminator)}"
        parts.append(part if name in required else f"( {part} )?")
    return " ".join(parts) if parts else '""'


def _non_string_types(schema: dict) -> list[str]:
    """The JSON types a value of `schema` written as JSON may have (where a format names them: all but string when
    the schema says no one type; the parser reads JSON for every one of them)."""
    kind = {"integer": "number"}.get(schema.get("type"), schema.get("type"))
    return [kind] if kind in NON_STRING_TYPES else list(NON_STRING_TYPES)
