"""Small pieces of GBNF text that grammars built here share: string literals, character-class members, and the
rule for text that never runs into a given marker (a reasoning block's close, an XML-like parameter's closing tag)."""

from __future__ import annotations

import json


def literal(text: str) -> str:
    """A GBNF string literal (GBNF escapes as JSON does); nothing for empty text."""
    return json.dumps(text) if text else ""


def class_member(char: str) -> str:
    """`char` as it is written inside a `[...]` character class."""
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, "\\" + char if char in "\\]^-[" else char)


def step_without(marker: str) -> str:
    """GBNF alternatives for one step of text that does not run into `marker` (the usual prefix construction: a
    character that cannot start it, or a proper prefix of it followed by a character that breaks it)."""
    steps = [f"[^{class_member(marker[0])}]"]
    steps += [f"{literal(marker[:length])} [^{class_member(marker[length])}]" for length in range(1, len(marker))]
    return " | ".join(steps)
