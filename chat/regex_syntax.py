"""Reads a regular expression (Rust regex syntax, as OpenAI's custom tools take it; Python's is the same for what is
read here) into a chat/text_grammar.py node that matches the whole input.

Read: literals and escapes (`\\n`, `\\x41`, `\\x{1F600}`, `\\u{...}`, escaped punctuation), `.` (not a newline),
classes with ranges and negation, `\\d \\w \\s` and their negations (ASCII classes), POSIX classes (`[[:alpha:]]`),
groups (`(...)`, `(?:...)`, `(?P<name>...)`, `(?<name>...)`), alternation, `* + ? {n} {n,} {n,m}` (lazy `?`
suffixes change nothing about which texts match), and `^` / `$` at the very start / end. Anything else is a 400
naming the construct: lookaround, backreferences, word boundaries, anchors inside the pattern, inline flags,
Unicode classes (`\\p{...}`), class set operations.
"""

from __future__ import annotations

import re

from chat.text_grammar import (
    EMPTY,
    MAX_CODE_POINT,
    Alt,
    Chars,
    Node,
    Ranges,
    Repeat,
    Seq,
    Text,
    case_folded,
    complement,
    folded_text,
    normalized,
)
from errors import InvalidRequest

DIGIT: Ranges = ((48, 57),)
WORD: Ranges = ((48, 57), (65, 90), (95, 95), (97, 122))
SPACE: Ranges = ((9, 13), (32, 32))
_SHORTHANDS = {"d": DIGIT, "w": WORD, "s": SPACE}
_POSIX: dict[str, Ranges] = {
    "alnum": ((48, 57), (65, 90), (97, 122)), "alpha": ((65, 90), (97, 122)), "ascii": ((0, 127),),
    "blank": ((9, 9), (32, 32)), "cntrl": ((0, 31), (127, 127)), "digit": DIGIT, "graph": ((33, 126),),
    "lower": ((97, 122),), "print": ((32, 126),), "punct": ((33, 47), (58, 64), (91, 96), (123, 126)),
    "space": SPACE, "upper": ((65, 90),), "word": WORD, "xdigit": ((48, 57), (65, 70), (97, 102)),
}
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_UNSUPPORTED_ESCAPES = {
    "b": "the word boundary \\b", "B": "the word boundary \\B", "A": "the anchor \\A", "z": "the anchor \\z",
    "Z": "the anchor \\Z", "<": "the word boundary \\<", ">": "the word boundary \\>", "G": "the anchor \\G",
    "k": "the backreference \\k", "K": "\\K",
}
_COUNT = re.compile(r"\{(\d+)(,(\d*))?\}")
_NAMED_GROUP = re.compile(r"\?P?<([A-Za-z_][A-Za-z0-9_]*)>")
NEWLINE: Ranges = ((10, 10),)
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


class RegexReader:
    def __init__(self, pattern: str, param: str, ignore_case: bool = False, dot_all: bool = False,
                 context: str = "regex") -> None:
        self.pattern = pattern
        self.param = param
        self.ignore_case = ignore_case
        self.dot_all = dot_all
        self.context = context  # how errors name the pattern ("regex", "the terminal /.../")
        self.at = 0

    def unsupported(self, construct: str) -> InvalidRequest:
        return InvalidRequest(f"The {self.context} uses {construct}, which this server cannot enforce.",
                              param=self.param)

    def malformed(self, problem: str) -> InvalidRequest:
        return InvalidRequest(f"The {self.context} is not a valid regular expression: {problem} (at character "
                              f"{self.at}).", param=self.param)

    def read(self) -> Node:
        node = self._alternation()
        if self.at < len(self.pattern):
            raise self.malformed("unbalanced ')'")
        return node

    def _peek(self, count: int = 1) -> str:
        return self.pattern[self.at:self.at + count]

    def _alternation(self) -> Node:
        options = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def _sequence(self) -> Node:
        items: list[Node] = []
        while self.at < len(self.pattern) and self._peek() not in "|)":
            items.append(self._quantified())
        items = [item for item in items if item != EMPTY]
        return items[0] if len(items) == 1 else Seq(tuple(items)) if items else EMPTY

    def _quantified(self) -> Node:
        node = self._atom()
        while True:
            char = self._peek()
            if char in ("*", "+", "?") and char:
                self.at += 1
                node = Repeat(node, 1 if char == "+" else 0, 1 if char == "?" else None)
            elif char == "{" and (count := _COUNT.match(self.pattern, self.at)):
                self.at = count.end()
                low = int(count.group(1))
                high = low if count.group(2) is None else int(count.group(3)) if count.group(3) else None
                if high is not None and high < low:
                    raise self.malformed(f"the count {count.group(0)} has its bounds reversed")
                node = Repeat(node, low, high)
            else:
                return node
            if self._peek() == "?":  # lazy: the same set of texts
                self.at += 1
            elif self._peek() == "+":
                raise self.unsupported("a possessive quantifier")

    def _atom(self) -> Node:
        char = self._peek()
        self.at += 1
        if char == "(":
            return self._group()
        if char == "[":
            return Chars(self._class())
        if char == ".":
            return Chars(((0, MAX_CODE_POINT),) if self.dot_all else complement(NEWLINE))
        if char == "^":
            if self.at != 1:
                raise self.unsupported("the anchor '^' inside the pattern (the whole input always matches)")
            return EMPTY
        if char == "$":
            if self.at != len(self.pattern):
                raise self.unsupported("the anchor '$' inside the pattern (the whole input always matches)")
            return EMPTY
        if char == "\\":
            return self._escape_node()
        if char in "*+?":
            raise self.malformed(f"'{char}' repeats nothing")
        if char == ")":
            raise self.malformed("unbalanced ')'")
        return folded_text(char) if self.ignore_case else Text(char)

    def _group(self) -> Node:
        if self._peek() == "?":
            named = _NAMED_GROUP.match(self.pattern, self.at)
            if named:
                self.at = named.end()
            elif self._peek(2) == "?:":
                self.at += 2
            elif self._peek(2) in ("?=", "?!") or self._peek(3) in ("?<=", "?<!"):
                raise self.unsupported(f"the lookaround '({self._peek(3).rstrip('(')}...)'")
            else:
                flags = re.match(r"\?[a-zA-Z-]*[:)]", self.pattern[self.at:])
                shown = flags.group(0) if flags else self._peek(2)
                raise self.unsupported(f"the inline flags '({shown}'")
        node = self._alternation()
        if self._peek() != ")":
            raise self.malformed("unclosed '('")
        self.at += 1
        return node

    def _escape_node(self) -> Node:
        found = self._escape()
        if isinstance(found, tuple):
            return Chars(case_folded(found) if self.ignore_case else found)
        return folded_text(found) if self.ignore_case else Text(found)

    def _escape(self) -> str | Ranges:
        """After a backslash: one character, or a set (`\\d`...)."""
        char = self._peek()
        if not char:
            raise self.malformed("a trailing backslash")
        self.at += 1
        if char.lower() in _SHORTHANDS:
            ranges = _SHORTHANDS[char.lower()]
            return complement(ranges) if char.isupper() else ranges
        if char in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[char]
        if char in "xuU":
            return self._code_point(char)
        if char in "pP":
            name = re.match(r"\{[^}]*\}|[A-Za-z]", self.pattern[self.at:])
            raise self.unsupported(f"the Unicode class '\\{char}{name.group(0) if name else ''}'")
        if char in _UNSUPPORTED_ESCAPES:
            raise self.unsupported(_UNSUPPORTED_ESCAPES[char])
        if char.isdigit():
            raise self.unsupported(f"the backreference '\\{char}'" if char != "0" else "the octal escape '\\0'")
        if char.isalnum():
            raise self.malformed(f"unknown escape '\\{char}'")
        return char

    def _code_point(self, kind: str) -> str:
        braced = re.match(r"\{([0-9A-Fa-f]{1,8})\}", self.pattern[self.at:])
        digits = re.match(f"[0-9A-Fa-f]{{{_HEX_DIGITS[kind]}}}", self.pattern[self.at:])
        found = braced or digits
        if not found:
            raise self.malformed(f"a '\\{kind}' escape without hex digits")
        self.at += found.end()
        code = int(found.group(1) if braced else found.group(0), 16)
        if code > MAX_CODE_POINT or 0xD800 <= code <= 0xDFFF:
            raise self.malformed(f"'\\{kind}{found.group(0)}' is not a character")
        return chr(code)

    def _class(self) -> Ranges:
        """After `[`: the set up to the closing `]`."""
        negated = self._peek() == "^"
        self.at += negated
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            char = self._peek()
            if not char:
                raise self.malformed("unclosed '['")
            if char == "]" and not first:
                self.at += 1
                break
            first = False
            if self._peek(2) in ("&&", "--", "~~"):
                raise self.unsupported(f"the class set operation '{self._peek(2)}'")
            if char == "[":
                posix = re.match(r"\[:(\^?)([a-z]+):\]", self.pattern[self.at:])
                if not posix or posix.group(2) not in _POSIX:
                    raise self.unsupported("a nested character class")
                self.at += posix.end()
                members = _POSIX[posix.group(2)]
                ranges += complement(members) if posix.group(1) else members
                continue
            low = self._class_member()
            if isinstance(low, tuple):
                ranges += low
                continue
            if self._peek() == "-" and self._peek(2) != "-]" and self._peek(2)[1:] not in ("", "]"):
                self.at += 1
                high = self._class_member()
                if isinstance(high, tuple) or ord(high) < ord(low):
                    raise self.malformed(f"a bad class range starting at '{low}'")
                ranges.append((ord(low), ord(high)))
            else:
                ranges.append((ord(low), ord(low)))
        members = normalized(ranges)
        if self.ignore_case:
            members = case_folded(members)
        return complement(members) if negated else members

    def _class_member(self) -> str | Ranges:
        char = self._peek()
        self.at += 1
        return self._escape() if char == "\\" else char


def regex_node(pattern: str, param: str, *, ignore_case: bool = False, dot_all: bool = False,
               context: str = "regex") -> Node:
    return RegexReader(pattern, param, ignore_case, dot_all, context).read()
