"""The shortest text a GBNF grammar accepts: what the smallest valid answer (a tool call, a JSON object) takes.

Engines compare its length in tokens with a request's max_tokens: an answer the grammar constrains cannot be
valid in fewer, so such a request is refused up front instead of streaming JSON that cannot be completed, and a
thinking model's reasoning is closed early enough to leave the answer that much room.

Reads the GBNF llama.cpp reads (rules `name ::= ...`, literals, character classes, groups, alternatives, `*` `+`
`?` `{m,n}`, `.`, comments) and finds each rule's shortest expansion by iterating to a fixed point. Anything it
does not understand gives None: no minimum is then assumed.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<define>::=)
  | (?P<name>[A-Za-z0-9_-]+)
  | (?P<literal>"(?:\\.|[^"\\])*")
  | (?P<klass>\[(?:\\.|[^\]\\])*\])
  | (?P<repeat>\{\s*\d+\s*(?:,\s*\d*\s*)?\})
  | (?P<op>[()|*+?.])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^", "/": "/"}
_FALLBACK_CHARS = "a0 "  # what a negated class most likely still allows


class _Unreadable(ValueError):
    pass


def shortest_text(gbnf: str, root: str = "root") -> str | None:
    """The shortest string the grammar's `root` accepts, or None (unreadable grammar, or no finite string)."""
    try:
        rules = _parse(gbnf)
        return _Shortest(rules).of_rule(root)
    except (_Unreadable, RecursionError):
        return None


def _tokens(text: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _Unreadable(f"unexpected text at {position}: {text[position:position + 20]!r}")
        if match.lastgroup != "space":
            found.append((match.lastgroup, match.group()))
        position = match.end()
    return found


def _parse(gbnf: str) -> dict[str, list]:
    """name -> alternatives; an alternative is a list of items: ("lit", text), ("class", chars, negated),
    ("ref", name), ("group", alternatives), ("any",), each possibly wrapped as ("rep", item, low)."""
    tokens = _tokens(gbnf)
    rules: dict[str, list] = {}
    index = 0
    while index < len(tokens):
        if index + 1 >= len(tokens) or tokens[index][0] != "name" or tokens[index + 1][0] != "define":
            raise _Unreadable(f"expected a rule at token {index}")
        name = tokens[index][1]
        end = index + 2
        while end < len(tokens) and not (tokens[end][0] == "name" and end + 1 < len(tokens)
                                         and tokens[end + 1][0] == "define"):
            end += 1
        alternatives, used = _alternatives(tokens[index + 2:end], 0)
        if used != end - index - 2:
            raise _Unreadable(f"unbalanced rule {name}")
        rules[name] = alternatives
        index = end
    return rules


def _alternatives(tokens: list, index: int) -> tuple[list, int]:
    alternatives, sequence = [], []
    while index < len(tokens):
        kind, text = tokens[index]
        if text == ")" and kind == "op":
            break
        if text == "|" and kind == "op":
            alternatives.append(sequence)
            sequence, index = [], index + 1
            continue
        item, index = _item(tokens, index)
        sequence.append(item)
    alternatives.append(sequence)
    return alternatives, index


def _item(tokens: list, index: int) -> tuple[tuple, int]:
    kind, text = tokens[index]
    if kind == "literal":
        item, index = ("lit", _unescape(text[1:-1])), index + 1
    elif kind == "klass":
        item, index = _char_class(text[1:-1]), index + 1
    elif kind == "name":
        item, index = ("ref", text), index + 1
    elif text == ".":
        item, index = ("any",), index + 1
    elif text == "(":
        inner, index = _alternatives(tokens, index + 1)
        if index >= len(tokens) or tokens[index][1] != ")":
            raise _Unreadable("unclosed group")
        item, index = ("group", inner), index + 1
    else:
        raise _Unreadable(f"unexpected {text!r}")
    while index < len(tokens) and (tokens[index][0] == "repeat" or tokens[index][1] in ("*", "+", "?")):
        postfix = tokens[index][1]
        low = {"*": 0, "?": 0, "+": 1}.get(postfix)
        if low is None:
            low = int(postfix.strip("{} ").split(",")[0])
        item, index = ("rep", item, low), index + 1
    return item, index


def _unescape(text: str) -> str:
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        code = text[index + 1] if index + 1 < len(text) else ""
        widths = {"x": 2, "u": 4, "U": 8}
        if code in widths:
            digits = text[index + 2:index + 2 + widths[code]]
            out.append(chr(int(digits, 16)))
            index += 2 + widths[code]
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
            index += 2
        else:
            raise _Unreadable(f"unknown escape \\{code}")
    return "".join(out)


def _char_class(body: str) -> tuple:
    negated = body.startswith("^")
    chars = _unescape(body[1:] if negated else body)
    ranges, index = [], 0
    while index < len(chars):
        if index + 2 < len(chars) and chars[index + 1] == "-":
            ranges.append((chars[index], chars[index + 2]))
            index += 3
        else:
            ranges.append((chars[index], chars[index]))
            index += 1
    return ("class", tuple(ranges), negated)


class _Shortest:
    def __init__(self, rules: dict[str, list]) -> None:
        self.rules = rules
        self.best: dict[str, str | None] = dict.fromkeys(rules)

    def of_rule(self, root: str) -> str | None:
        if root not in self.rules:
            raise _Unreadable(f"no rule {root}")
        changed = True
        while changed:  # each pass can only shorten a rule; lengths are bounded below, so this ends
            changed = False
            for name, alternatives in self.rules.items():
                found = self._alternatives(alternatives)
                if found is not None and (self.best[name] is None or len(found) < len(self.best[name])):
                    self.best[name], changed = found, True
        return self.best[root]

    def _alternatives(self, alternatives: list) -> str | None:
        options = [text for text in map(self._sequence, alternatives) if text is not None]
        return min(options, key=len) if options else None

    def _sequence(self, items: list) -> str | None:
        parts = []
        for item in items:
            text = self._item(item)
            if text is None:
                return None
            parts.append(text)
        return "".join(parts)

    def _item(self, item: tuple) -> str | None:
        kind = item[0]
        if kind == "lit":
            return item[1]
        if kind == "ref":
            if item[1] not in self.rules:
                raise _Unreadable(f"undefined rule {item[1]}")
            return self.best[item[1]]
        if kind == "group":
            return self._alternatives(item[1])
        if kind == "any":
            return "a"
        if kind == "class":
            return _class_member(item[1], item[2])
        inner = self._item(item[1]) if item[2] else ""  # ("rep", item, low)
        return None if inner is None else inner * item[2]


def _class_member(ranges: tuple, negated: bool) -> str:
    if not negated:
        return ranges[0][0]
    for char in _FALLBACK_CHARS + "".join(map(chr, range(0x21, 0x7F))):
        if not any(low <= char <= high for low, high in ranges):
            return char
    raise _Unreadable("a class that excludes all of ASCII")
