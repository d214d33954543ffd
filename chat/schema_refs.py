"""Local `$ref`s that stay resolvable wherever a schema ends up.

A JSON schema's `#/...` references point into its own root. pydantic v2 and zod put nested models in `$defs`
(or `definitions`) and refer to them as `#/$defs/Name`; a recursive model's root is itself a `$ref`. Two places
break that: a tool's `parameters` are embedded inside the call-wrapper schema (so `#/` would mean the wrapper),
and llama.cpp's converter does not look at `$defs` beside a root `$ref`. Here each tool's definitions move to the
wrapper's `$defs` under the tool's own namespace and its references are rewritten to match; a root `$ref` is
replaced by its target (the definitions stay beside it).
"""

from __future__ import annotations

import copy
import re
from typing import Any

_DEFINITION_KEYS = ("$defs", "definitions")


def _rule_safe(name: str) -> str:
    """A definition name the converter keeps as is: it turns other characters into '-' in rule definitions but
    not in recursive references to them, which would leave a reference to a rule that does not exist."""
    return re.sub(r"[^A-Za-z0-9-]", "-", name)


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def rooted(schema: dict) -> dict:
    """`schema` with a local root `$ref` replaced by what it points to (its definitions kept)."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: Any = schema
    for segment in ref[2:].split("/"):
        if not isinstance(target, dict) or _unescape(segment) not in target:
            return schema  # a broken reference: the converter reports it
        target = target[_unescape(segment)]
    rest = {key: value for key, value in schema.items() if key != "$ref"}
    return rooted({**rest, **copy.deepcopy(target)}) if target is not schema else schema


def embeddable(schema: dict, namespace: str) -> tuple[dict, dict]:
    """(`schema` ready to embed anywhere, the definitions to add to the embedding root's `$defs`).

    `#/$defs/X` and `#/definitions/X` become `#/$defs/<namespace>-X`; a reference to the schema's own root (or
    into it) goes through a `<namespace>-root` definition, added only when something refers to it."""
    uses_root = False

    def rewrite_ref(ref: str) -> str:
        nonlocal uses_root
        if not ref.startswith("#"):
            return ref  # remote: refused by the schema checks
        segments = [segment for segment in ref[1:].split("/") if segment]
        if len(segments) >= 2 and segments[0] in _DEFINITION_KEYS:
            rest = "/".join(segments[2:])
            return f"#/$defs/{_rule_safe(namespace + '-' + _unescape(segments[1]))}" + (f"/{rest}" if rest else "")
        uses_root = True
        return f"#/$defs/{_rule_safe(namespace + '-root')}" + "".join(f"/{segment}" for segment in segments)

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        return {key: rewrite_ref(value) if key == "$ref" and isinstance(value, str) else rewrite(value)
                for key, value in node.items()}

    definitions = {}
    for key in _DEFINITION_KEYS:
        for name, sub in (schema.get(key) or {}).items():
            definitions[_rule_safe(f"{namespace}-{name}")] = rewrite(sub)
    body = rewrite({key: value for key, value in schema.items() if key not in _DEFINITION_KEYS})
    if uses_root:
        definitions[_rule_safe(f"{namespace}-root")] = body
    return body, definitions


def self_contained(schema: dict) -> dict:
    """A response format's schema with rule-safe definition names and no root `$ref` (see `rooted`)."""
    body, definitions = embeddable(schema, "schema")
    return rooted({**body, "$defs": definitions}) if definitions else body
