"""GBNF for tool arguments written in a notation other than JSON (Gemma 4's, Python's keyword arguments), from the
tool's JSON schema: the same schema walk for every notation, a `Notation` saying how each kind of value is written.
Properties come in declared (or, where the template sorts them, sorted) order, required ones always, optional ones
maybe; a schema the walk does not know takes any value of the notation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chat.gbnf_text import literal


@dataclass(frozen=True)
class Notation:
    prefix: str  # of the shared rules' names
    rules: dict[str, str]  # the shared rules (`<prefix>-value`, `-string`, `-number`, `-object`, `-list` at least)
    text_of: Callable[[Any], str]  # a constant (an enum option) as the notation writes it
    member: Callable[[str], str]  # a nested object's key, as written before its value
    true: str = "true"
    false: str = "false"
    null: str = "null"
    separator: str = ","  # between list items and object members
    sorted_keys: bool = False  # the template writes keys sorted (Gemma 4's `dictsort`)

    def rule(self, kind: str) -> str:
        return f"{self.prefix}-{kind}"


def value_rule(converter, notation: Notation, schema: dict, rule: str) -> str:
    """Adds the rules of a value of `schema` to `converter` (llama-cpp-python's SchemaConverter, for its rule
    table); returns the rule's name."""
    for name, body in notation.rules.items():
        converter._add_rule(name, body)
    return _value(converter, notation, schema or {}, rule)


def fields_rule(converter, notation: Notation, schema: dict, rule: str, key: Callable[[str], str],
                separator: str) -> str:
    """The properties of an object schema as `key(name) value` fields between separators (no braces)."""
    for name, body in notation.rules.items():
        converter._add_rule(name, body)
    return _fields(converter, notation, schema, rule, key, separator)


def _value(converter, notation: Notation, schema: dict, rule: str) -> str:
    kind = schema.get("type")
    if "enum" in schema:
        return converter._add_rule(rule, " | ".join(literal(notation.text_of(option)) for option in schema["enum"]))
    if "const" in schema:
        return converter._add_rule(rule, literal(notation.text_of(schema["const"])))
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        names = [_value(converter, notation, option or {}, f"{rule}-{index}")
                 for index, option in enumerate(alternatives)]
        return converter._add_rule(rule, " | ".join(names))
    if isinstance(kind, list):
        names = [_value(converter, notation, {**schema, "type": one}, f"{rule}-{one}") for one in kind]
        return converter._add_rule(rule, " | ".join(names))
    if kind == "string":
        return notation.rule("string")
    if kind == "integer":
        return converter._add_rule(rule, '"-"? [0-9]+')
    if kind == "number":
        return notation.rule("number")
    if kind == "boolean":
        return converter._add_rule(rule, f"{literal(notation.true)} | {literal(notation.false)}")
    if kind == "null":
        return converter._add_rule(rule, literal(notation.null))
    if kind == "array":
        item = _value(converter, notation, schema.get("items") or {}, f"{rule}-item")
        return converter._add_rule(rule, f'"[" ( {item} ( {literal(notation.separator)} {item} )* )? "]"')
    if kind == "object" or "properties" in schema:
        if not schema.get("properties"):
            return notation.rule("object") if schema.get("additionalProperties", True) is not False \
                else converter._add_rule(rule, '"{}"')
        fields = _fields(converter, notation, schema, f"{rule}-fields", notation.member, notation.separator)
        return converter._add_rule(rule, f'"{{" {fields} "}}"')
    return notation.rule("value")


def _fields(converter, notation: Notation, schema: dict, rule: str, key: Callable[[str], str], separator: str) -> str:
    properties = list((schema.get("properties") or {}).items())
    if notation.sorted_keys:
        properties.sort()
    required = set(schema.get("required") or [])
    # `rule-k-first` / `rule-k-rest`: the properties from the k-th on, before any (no separator) or after one
    count = len(properties)
    for position in range(count, -1, -1):
        for first in (True, False):
            name = f"{rule}-{position}-{'first' if first else 'rest'}"
            if position == count:
                converter._add_rule(name, '""')
                continue
            field_name, subschema = properties[position]
            value = _value(converter, notation, subschema or {}, f"{rule}-{position}-value")
            present = f'{literal(("" if first else separator) + key(field_name))} {value} {rule}-{position + 1}-rest'
            skipped = f"{rule}-{position + 1}-{'first' if first else 'rest'}"
            converter._add_rule(name, present if field_name in required else f"( {present} ) | {skipped}")
    return f"{rule}-0-first"
