"""A small grammar over characters (what a custom tool's Lark or regex input grammar is read into), checked for what
llama.cpp's grammar engine cannot run and written out as GBNF: as the raw text, or as that text JSON-escaped (the
inside of a JSON string, for call formats whose arguments are JSON).

The readers are chat/lark_syntax.py and chat/regex_syntax.py. Both engines (llama.cpp, and xgrammar for
transformers) take the GBNF written here, so one conversion serves both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from errors import InvalidRequest

MAX_CODE_POINT = 0x10FFFF
Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, not adjacent: inclusive code point ranges


@dataclass(frozen=True)
class Chars:
    """One character from a set."""

    ranges: Ranges


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    item: Node
    low: int
    high: int | None  # None: no upper bound


@dataclass(frozen=True)
class Ref:
    name: str


Node = Chars | Text | Seq | Alt | Repeat | Ref
EMPTY = Text("")
MAX_REPEAT = 1000  # llama.cpp unrolls counted repetitions into rules: a bound keeps the grammar small


@dataclass(frozen=True)
class TextGrammar:
    """Rules by name (names of the source grammar, or internal ones starting with a digit) and the start rule."""

    rules: dict[str, Node]
    start: str


# ---------------------------------------------------------------- character sets


def normalized(ranges) -> Ranges:
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple((low, high) for low, high in merged)


def complement(ranges: Ranges) -> Ranges:
    result, start = [], 0
    for low, high in ranges:
        if low > start:
            result.append((start, low - 1))
        start = high + 1
    if start <= MAX_CODE_POINT:
        result.append((start, MAX_CODE_POINT))
    return tuple(result)


def difference(ranges: Ranges, removed: Ranges) -> Ranges:
    return complement(normalized(complement(ranges) + removed))


def intersection(ranges: Ranges, other: Ranges) -> Ranges:
    return complement(normalized(complement(ranges) + complement(other)))


def case_folded(ranges: Ranges) -> Ranges:
    """The set with the other case of each ASCII letter in it added."""
    extra = []
    for offset, (low, high) in ((32, (65, 90)), (-32, (97, 122))):
        for start, end in intersection(ranges, ((low, high),)):
            extra.append((start + offset, end + offset))
    return normalized(ranges + tuple(extra))


def folded_text(text: str) -> Node:
    """A literal matched without regard to ASCII case."""
    items = [Chars(case_folded(((ord(c), ord(c)),))) if c.isascii() and c.isalpha() else Text(c) for c in text]
    return items[0] if len(items) == 1 else Seq(tuple(items))


# ---------------------------------------------------------------- checks


def _nullable_rules(grammar: TextGrammar) -> set[str]:
    nullable: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, node in grammar.rules.items():
            if name not in nullable and can_be_empty(node, nullable):
                nullable.add(name)
                changed = True
    return nullable


def can_be_empty(node: Node, nullable: set[str]) -> bool:
    if isinstance(node, Text):
        return not node.text
    if isinstance(node, Chars):
        return False
    if isinstance(node, Seq):
        return all(can_be_empty(item, nullable) for item in node.items)
    if isinstance(node, Alt):
        return any(can_be_empty(option, nullable) for option in node.options)
    if isinstance(node, Repeat):
        return node.low == 0 or can_be_empty(node.item, nullable)
    return node.name in nullable


def _leftmost_refs(node: Node, nullable: set[str]) -> set[str]:
    """The rules that can be entered before any character of `node` is read."""
    if isinstance(node, Ref):
        return {node.name}
    if isinstance(node, Repeat):
        return _leftmost_refs(node.item, nullable)
    if isinstance(node, Alt):
        return set().union(*(_leftmost_refs(option, nullable) for option in node.options))
    if isinstance(node, Seq):
        found: set[str] = set()
        for item in node.items:
            found |= _leftmost_refs(item, nullable)
            if not can_be_empty(item, nullable):
                break
        return found
    return set()


def parts(node: Node):
    """`node` and every node inside it."""
    yield node
    for child in (node.items if isinstance(node, Seq) else node.options if isinstance(node, Alt)
                  else (node.item,) if isinstance(node, Repeat) else ()):
        yield from parts(child)


def check(grammar: TextGrammar, param: str, display=lambda name: name) -> None:
    """Refuse what llama.cpp's engine cannot run: references to rules that do not exist, left recursion, repetitions
    of what can match nothing (both loop forever in a top-down matcher), empty character sets, huge counts.
    `display`: a rule's name as the client wrote it."""
    for name, node in grammar.rules.items():
        for part in parts(node):
            if isinstance(part, Ref) and part.name not in grammar.rules:
                raise InvalidRequest(f"The grammar uses '{display(part.name)}', which it does not define.", param=param)
            if isinstance(part, Chars) and not part.ranges:
                raise InvalidRequest("The grammar has a character set that matches no character.", param=param)
            if isinstance(part, Repeat) and max(part.low, part.high or 0) > MAX_REPEAT:
                raise InvalidRequest(f"Repetition counts above {MAX_REPEAT} are not supported.", param=param)
    nullable = _nullable_rules(grammar)
    for node in grammar.rules.values():
        for part in parts(node):
            if isinstance(part, Repeat) and part.high != 1 and can_be_empty(part.item, nullable):
                raise InvalidRequest("A repetition of something that can match empty text (such as `(a?)*`) is not "
                                     "supported: make the repeated part match at least one character.", param=param)
    edges = {name: _leftmost_refs(node, nullable) for name, node in grammar.rules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str) -> None:
        state[name] = 1
        for target in edges[name]:
            if state.get(target) == 1:
                raise InvalidRequest(f"Left recursion (rule '{display(target)}' can start with itself) is not "
                                     "supported: write it with repetition, e.g. `sum: term (\"+\" term)*`.", param=param)
            if target not in state:
                visit(target)
        state[name] = 2

    for name in grammar.rules:
        if name not in state:
            visit(name)


# ---------------------------------------------------------------- GBNF

_JSON_SPECIAL = normalized(((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)))  # written escaped inside a JSON string
_SURROGATES = (0xD800, 0xDFFF)


def _escaped_char(code: int, specials: str) -> str:
    char = chr(code)
    if char in specials:
        return "\\" + char
    if char in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02X}"
    if code > 0xFFFF:
        return f"\\U{code:08X}"
    if _SURROGATES[0] <= code <= _SURROGATES[1] or not char.isprintable():
        return f"\\u{code:04X}"
    return char


def gbnf_literal(text: str) -> str:
    return '"' + "".join(_escaped_char(ord(c), '"\\') for c in text) + '"'


def gbnf_class(ranges: Ranges) -> str:
    """The shorter of `[set]` and `[^complement]`."""
    other = complement(ranges)
    negated = len(other) <= len(ranges)

    def member(code: int) -> str:
        return _escaped_char(code, "\\]^-[")

    members = "".join(member(low) if low == high else f"{member(low)}-{member(high)}"
                      for low, high in (other if negated else ranges))
    return f"[{'^' if negated else ''}{members}]"


def _json_escapes(special: Ranges) -> str:
    """The escapes `json.dumps` writes for these characters (quote, backslash, controls) as one alternative that
    branches after the backslash: llama.cpp's sampler checks every token against each alternative open at a position,
    and one per character (34 for a negated class) made a pass over SmolLM2's vocabulary 3.8 times as slow as a free
    JSON string's (grouped: 0.9 times; bench/bench_custom_tool_grammar.py)."""
    short, by_first_digit = [], {}
    for low, high in special:
        for code in range(low, high + 1):
            escape = json.dumps(chr(code))[2:-1]  # without the quotes and the backslash
            if len(escape) == 1:
                short.append(escape)
            else:  # u00XX
                by_first_digit.setdefault(escape[3], []).append(escape[4])
    options = [gbnf_class(normalized((ord(c), ord(c)) for c in short))] if short else []
    if by_first_digit:
        digits = [f"{gbnf_literal(first)} {gbnf_class(normalized((ord(c), ord(c)) for c in seconds))}"
                  for first, seconds in sorted(by_first_digit.items())]
        options.append(f'"u00" ( {" | ".join(digits)} )')
    return f'"\\\\" ( {" | ".join(options)} )'


class GbnfWriter:
    """Writes a TextGrammar's rules as GBNF rule bodies, each name under `prefix`; `json_escaped`: the text as it is
    written inside a JSON string (quote, backslash and control characters escaped, as `json.dumps` writes them)."""

    def __init__(self, prefix: str, json_escaped: bool) -> None:
        self.prefix = prefix
        self.json_escaped = json_escaped
        self.rules: dict[str, str] = {}
        self._classes: dict[Ranges, str] = {}

    def name(self, rule: str) -> str:
        return f"{self.prefix}-{rule.replace('_', '-')}"

    def write(self, grammar: TextGrammar) -> str:
        """Adds the grammar's rules; the name of its start rule."""
        for rule, node in grammar.rules.items():
            self.rules[self.name(rule)] = self.expression(node)
        return self.name(grammar.start)

    def expression(self, node: Node) -> str:
        if isinstance(node, Text):
            text = json.dumps(node.text, ensure_ascii=False)[1:-1] if self.json_escaped else node.text
            return gbnf_literal(text) if text else '""'
        if isinstance(node, Chars):
            return self._chars(node.ranges)
        if isinstance(node, Ref):
            return self.name(node.name)
        if isinstance(node, Seq):
            return " ".join(self._grouped(item) for item in node.items) if node.items else '""'
        if isinstance(node, Alt):
            return " | ".join(self.expression(option) for option in node.options)
        item = self._grouped(node.item, for_repeat=True)
        if (node.low, node.high) == (0, 1):
            return f"{item}?"
        if (node.low, node.high) in ((0, None), (1, None)):
            return f"{item}{'*' if node.low == 0 else '+'}"
        if node.high == node.low:
            return f"{item}{{{node.low}}}"
        return f"{item}{{{node.low},{'' if node.high is None else node.high}}}"

    def _grouped(self, node: Node, for_repeat: bool = False) -> str:
        text = self.expression(node)
        # (a postfix operator binds tighter than a sequence, so only a repeat of a repeat needs the brackets)
        simple = isinstance(node, Chars | Ref) or not for_repeat and isinstance(node, Text | Repeat)
        return text if simple else f"( {text} )"

    def _chars(self, ranges: Ranges) -> str:
        if not self.json_escaped or not intersection(ranges, _JSON_SPECIAL):
            return gbnf_class(ranges)
        if ranges in self._classes:
            return self._classes[ranges]
        plain = difference(ranges, _JSON_SPECIAL)
        options = [gbnf_class(plain)] if plain else []
        options.append(_json_escapes(intersection(ranges, _JSON_SPECIAL)))
        name = f"{self.prefix}-0c{len(self._classes)}"  # (a shared rule: a negated class escapes 34 characters)
        self.rules[name] = " | ".join(options)
        self._classes[ranges] = name
        return name
