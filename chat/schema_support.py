"""Which JSON-schema keywords the grammar can enforce, and what happens to the others.

A `strict` schema (a tool's `strict: true`, a json_schema response format's `strict: true`) promises the client
that every keyword holds: a keyword the grammar cannot enforce is a 400 naming it and where it is. A non-strict
schema is a description the model should follow (OpenAI does not enforce those at all): such keywords are left
out of the grammar with a logged warning, and everything else is still enforced. Claude Code's own tools use
`exclusiveMinimum`, for instance: refusing them would stop it cold.

Integer bounds become enumerations (exclusive bounds first become inclusive ones), which the converter enforces;
other numeric bounds are not enforceable. Remote `$ref`s are always a 400: there is nothing to resolve them with.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from errors import InvalidRequest

logger = logging.getLogger(__name__)

# JSON-schema keywords the converter does not enforce (it would ignore them and produce unconstrained output).
UNSUPPORTED_KEYWORDS = {
    "not", "if", "then", "else", "dependentSchemas", "dependentRequired", "patternProperties", "propertyNames",
    "unevaluatedProperties", "unevaluatedItems", "contains", "minContains", "maxContains", "uniqueItems",
    "multipleOf", "minProperties", "maxProperties",
}
# Keywords whose value maps names to subschemas: those names are data (a property may be called "not" or
# "minimum"), so the walkers below descend into their values without reading the names as keywords.
SCHEMA_MAPS = ("properties", "$defs", "definitions")
_LITERALS = ("enum", "const", "default", "examples")  # values, not subschemas
# Keywords that say nothing about the value: a subschema with only these (or none) admits any JSON value.
_ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
                "$schema", "$id", "$anchor"}
ANY_VALUE = ["string", "number", "boolean", "object", "array", "null"]
MAX_ENUMERATED_RANGE = 1000
# Length bounds become one grammar rule per allowed step: beyond these they are not enforceable (Claude Code sends
# a `maxLength` of 524288, a 4 MB rule that crashed llama.cpp's grammar engine); max_tokens bounds the text anyway.
MAX_ENFORCED_LENGTH = 2048
MAX_ENFORCED_ITEMS = 256
_LENGTH_LIMITS = {"minLength": MAX_ENFORCED_LENGTH, "maxLength": MAX_ENFORCED_LENGTH,
                  "minItems": MAX_ENFORCED_ITEMS, "maxItems": MAX_ENFORCED_ITEMS}
# String formats the converter has rules for (uuid1..uuid5 too); any other (email, uri, hostname...) it ignores.
ENFORCED_FORMATS = re.compile(r"^(date|time|date-time|uuid[1-5]?)$")


def map_values(key: str, value: Any, transform) -> Any:
    """`transform` applied to a keyword's value; for a map of named subschemas, to each subschema."""
    if key in SCHEMA_MAPS and isinstance(value, dict):
        return {name: transform(sub) for name, sub in value.items()}
    return transform(value)


class _Policy:
    def __init__(self, param: str, strict: bool) -> None:
        self.param, self.strict = param, strict
        self.dropped: list[str] = []

    def unenforceable(self, feature: str, path: str, why: str = "") -> None:
        if self.strict:
            raise InvalidRequest(f"JSON schema feature '{feature}' (at {path}) cannot be enforced by this server's "
                                 f"grammar engine{why}.", param=self.param)
        self.dropped.append(f"{feature} at {path}")


def enforceable(schema: Any, param: str, strict: bool = False) -> Any:
    """The schema with what the grammar cannot enforce refused (strict) or left out (not strict, logged)."""
    policy = _Policy(param, strict)
    result = _walk(schema, policy, "$")
    if policy.dropped:
        logger.warning("Not enforced by the grammar (the schema is not strict): %s", ", ".join(policy.dropped))
    return result


def _walk(schema: Any, policy: _Policy, path: str) -> Any:
    if isinstance(schema, list):
        return [_walk(item, policy, f"{path}[{index}]") for index, item in enumerate(schema)]
    if not isinstance(schema, dict):
        return schema
    kept = {}
    for key, value in schema.items():
        if key in UNSUPPORTED_KEYWORDS:
            policy.unenforceable(key, path)
            continue
        if key == "format" and isinstance(value, str) and not ENFORCED_FORMATS.match(value):
            policy.unenforceable(f"format '{value}'", path, ": only date, time, date-time and uuid are")
            continue
        if key in _LENGTH_LIMITS and isinstance(value, int) and value > _LENGTH_LIMITS[key]:
            policy.unenforceable(key, path, f" beyond {_LENGTH_LIMITS[key]}")
            continue
        if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
            raise InvalidRequest(f"Remote schema references are not supported ('{value}').", param=policy.param)
        if key in SCHEMA_MAPS and isinstance(value, dict):
            kept[key] = {name: _walk(sub, policy, f"{path}.{key}.{name}") for name, sub in value.items()}
        else:
            kept[key] = value if key in _LITERALS else _walk(value, policy, f"{path}.{key}")
    if path != "$" and set(kept) <= _ANNOTATIONS:  # the converter reads `{}` as "an object", JSON Schema as "any"
        kept["type"] = ANY_VALUE
    return _bounded(kept, policy, path)


def _bounded(schema: dict, policy: _Policy, path: str) -> dict:
    """Numeric bounds: a small integer range becomes an `enum` of its values; other bounds are unenforceable."""
    schema = dict(schema)
    if schema.get("type") == "integer":  # exclusive integer bounds are inclusive ones, one step in
        if isinstance(schema.get("exclusiveMinimum"), int):
            schema["minimum"] = max(schema.pop("exclusiveMinimum") + 1, schema.get("minimum", -(2**63)))
        if isinstance(schema.get("exclusiveMaximum"), int):
            schema["maximum"] = min(schema.pop("exclusiveMaximum") - 1, schema.get("maximum", 2**63))
    bounds = [key for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if key in schema]
    if not bounds:
        return schema
    low, high = schema.get("minimum"), schema.get("maximum")
    if (schema.get("type") == "integer" and bounds == ["minimum", "maximum"] and isinstance(low, int)
            and isinstance(high, int) and 0 <= high - low < MAX_ENUMERATED_RANGE):
        rest = {key: value for key, value in schema.items() if key not in ("minimum", "maximum", "type")}
        return {**rest, "enum": list(range(low, high + 1))}
    policy.unenforceable("/".join(bounds), path,
                         f": only integers with both bounds at most {MAX_ENUMERATED_RANGE} apart are")
    return {key: value for key, value in schema.items() if key not in bounds}
