"""Reads a Lark grammar, in the dialect OpenAI's custom tools take (llguidance's Lark), into a chat/text_grammar.py
grammar whose start rule is `start`.

Read: rules (`name: ...`, with `?`/`!` prefixes and `.N` priorities, which change no language) and terminals
(`NAME: ...`), alternatives over several lines (`| ...`), `-> alias`, groups, `[optional]`, `? * +`, `~ n` and
`~ n..m`, strings (`"..."`, `"..."i`), character ranges (`"a".."z"`), regexes (`/.../` with flags `i`, `s`, `m`, `u`;
chat/regex_syntax.py), `%import common.NAME` (and `common (A, B)`, `-> ALIAS`), `%ignore`, comments.

A Lark grammar is lexed (terminals are tokens), GBNF is not: here a terminal is a rule like any other, and
`%ignore`d text may come between any two items of a rule (not inside terminals), which is the language Lark
accepts for grammars whose tokens do not collide. llguidance's own extensions (`%json`, `%regex`, `%llguidance`,
special tokens `<...>`, `[lazy]`-style attributes, `&`) and Lark's templates, `%declare`, `%override`, `%extend`
are a 400 naming the construct.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass

from chat.regex_syntax import regex_node
from chat.text_grammar import EMPTY, Alt, Chars, Node, Ref, Repeat, Seq, Text, TextGrammar, folded_text, parts
from errors import InvalidRequest

_TOKEN = re.compile(r"""
    (?P<space>[ \t\f\r]+|\\\n)
  | (?P<string>"(?:[^"\\\n]|\\.)*"i?)
  | (?P<regexp>/(?!/)(?:[^/\\\n]|\\.)+/[a-z]*)
  | (?P<comment>//[^\n]*|\#[^\n]*)
  | (?P<newline>\n)
  | (?P<range>\.\.)
  | (?P<arrow>->)
  | (?P<name>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<number>[+-]?[0-9]+)
  | (?P<op>.)
""", re.VERBOSE)

# Lark's common.lark terminals, written again here (the server reads no Lark files).
COMMON = r"""
DIGIT: "0".."9"
HEXDIGIT: "a".."f" | "A".."F" | DIGIT
INT: DIGIT+
SIGNED_INT: ["+" | "-"] INT
DECIMAL: INT "." INT? | "." INT
_EXP: ("e" | "E") SIGNED_INT
FLOAT: INT _EXP | DECIMAL _EXP?
SIGNED_FLOAT: ["+" | "-"] FLOAT
NUMBER: FLOAT | INT
SIGNED_NUMBER: ["+" | "-"] NUMBER
ESCAPED_STRING: "\"" /([^"\\\n]|\\[^\n])*/ "\""
LCASE_LETTER: "a".."z"
UCASE_LETTER: "A".."Z"
LETTER: UCASE_LETTER | LCASE_LETTER
WORD: LETTER+
CNAME: ("_" | LETTER) ("_" | LETTER | DIGIT)*
WS_INLINE: (" " | /\t/)+
WS: /[ \t\f\r\n]/+
CR: /\r/
LF: /\n/
NEWLINE: (CR? LF)+
SH_COMMENT: /#[^\n]*/
CPP_COMMENT: /\/\/[^\n]*/
C_COMMENT: "/*" /([^*]|\*+[^*\/])*/ /\*+/ "/"
SQL_COMMENT: /--[^\n]*/
"""

_DIRECTIVES_REFUSED = {"declare", "override", "extend", "llguidance", "json", "regex", "lark", "grammar"}
IGNORED = "0ignored"  # the internal rule of %ignore'd text (Lark names never start with a digit)
START = "0start"


@dataclass
class _Token:
    kind: str
    text: str


class LarkReader:
    def __init__(self, definition: str, param: str) -> None:
        self.param = param
        self.rules: dict[str, Node] = {}
        self.terminals: set[str] = set()
        self.ignored: list[Node] = []
        self._statements = self._split(self._tokens(definition))
        self._tokens_at: list[_Token] = []
        self._at = 0

    def error(self, message: str) -> InvalidRequest:
        return InvalidRequest(f"The Lark grammar {message}", param=self.param)

    def unsupported(self, construct: str) -> InvalidRequest:
        return self.error(f"uses {construct}, which this server cannot enforce.")

    # ---------------------------------------------------------------- tokens and statements

    def _tokens(self, text: str) -> list[_Token]:
        tokens = []
        for match in _TOKEN.finditer(text):
            kind = match.lastgroup
            if kind not in ("space", "comment"):
                tokens.append(_Token(kind, match.group()))
        return tokens

    def _split(self, tokens: list[_Token]) -> list[list[_Token]]:
        """Statements: lines, a line that starts with `|` (or a line break inside brackets) continuing the last."""
        statements: list[list[_Token]] = [[]]
        depth = 0
        for index, token in enumerate(tokens):
            if token.kind == "newline":
                following = next((t for t in tokens[index + 1:] if t.kind != "newline"), None)
                if depth == 0 and not (following and following.text == "|"):
                    statements.append([])
                continue
            depth += token.text in "([{" if token.kind == "op" else 0
            depth -= token.text in ")]}" if token.kind == "op" else 0
            statements[-1].append(token)
        return [statement for statement in statements if statement]

    def _peek(self) -> _Token | None:
        return self._tokens_at[self._at] if self._at < len(self._tokens_at) else None

    def _take(self) -> _Token:
        token = self._peek()
        if token is None:
            raise self.error(f"ends too early in: {self._shown()}")
        self._at += 1
        return token

    def _expect(self, text: str) -> None:
        token = self._take()
        if token.text != text:
            raise self.error(f"has '{token.text}' where '{text}' was expected, in: {self._shown()}")

    def _shown(self) -> str:
        return " ".join(token.text for token in self._tokens_at)[:120]

    # ---------------------------------------------------------------- statements

    def read(self) -> TextGrammar:
        for statement in self._statements:
            self._tokens_at, self._at = statement, 0
            if statement[0].text == "%":
                self._directive()
            else:
                self._definition()
        if "start" not in self.rules:
            raise self.error("has no 'start' rule.")
        ignored = Alt(tuple(self.ignored)) if len(self.ignored) > 1 else self.ignored[0] if self.ignored else None
        start: Node = Ref("start")
        if ignored is not None:
            self.rules[IGNORED] = Repeat(ignored, 0, None)
            start = Seq((Ref(IGNORED), start, Ref(IGNORED)))
        self.rules[START] = start
        return TextGrammar(self._reachable(START), START)

    def _reachable(self, start: str) -> dict[str, Node]:
        kept: dict[str, Node] = {}
        pending = [start]
        while pending:
            name = pending.pop()
            if name in kept or name not in self.rules:
                continue
            kept[name] = self.rules[name]
            pending += [part.name for part in parts(kept[name]) if isinstance(part, Ref)]
        return kept

    def _directive(self) -> None:
        self._take()
        name = self._take().text
        if name == "import":
            self._import()
        elif name == "ignore":
            self.ignored.append(self._expansions(terminal=True))
            self._end()
        elif name in _DIRECTIVES_REFUSED:
            raise self.unsupported(f"the directive '%{name}'")
        else:
            raise self.unsupported(f"an unknown directive '%{name}'")

    def _end(self) -> None:
        if self._peek() is not None:
            raise self.error(f"has unexpected '{self._peek().text}' in: {self._shown()}")

    def _import(self) -> None:
        path = [self._take().text]
        while self._peek() and self._peek().text == ".":
            self._take()
            path.append(self._take().text)
        if self._peek() and self._peek().text == "(":
            self._take()
            names = []
            while self._peek() and self._peek().text != ")":
                token = self._take()
                if token.text != ",":
                    names.append(token.text)
            self._expect(")")
            module, imports = path, [(name, name) for name in names]
        else:
            module, alias = path[:-1], path[-1]
            if self._peek() and self._peek().kind == "arrow":
                self._take()
                alias = self._take().text
            imports = [(path[-1], alias)]
        self._end()
        if module != ["common"]:
            raise self.unsupported(f"'%import' from '{'.'.join(module) or path[0]}' (only 'common' is available)")
        common = _common()
        for name, alias in imports:
            if name not in common.rules:
                raise self.error(f"imports '{name}', which 'common' does not define.")
            for dependency, node in common._reachable(name).items():
                self.rules.setdefault(dependency, node)
                self.terminals.add(dependency)
            if alias != name:
                self.rules[alias] = Ref(name)
                self.terminals.add(alias)

    def _definition(self) -> None:
        token = self._take()
        if token.text in ("?", "!"):
            token = self._take()
        if token.kind != "name":
            raise self.error(f"has '{token.text}' where a rule or terminal name was expected, in: {self._shown()}")
        name = token.text
        terminal = name.lstrip("_")[:1].isupper()
        following = self._peek()
        if following and following.text == "." and self._at + 1 < len(self._tokens_at):
            self._take()
            if self._take().kind != "number":
                raise self.error(f"has a bad priority after '{name}'.")
        following = self._peek()
        if following and following.text == "{":
            raise self.unsupported(f"a template rule ('{name}{{...}}')")
        if following and following.text == "[":
            raise self.unsupported(f"attributes on '{name}' (llguidance's '[...]' after a name)")
        self._expect(":")
        if name in self.rules and name not in self.terminals:
            raise self.error(f"defines '{name}' twice.")
        self.rules[name] = self._expansions(terminal)
        if terminal:
            self.terminals.add(name)
        else:
            self.terminals.discard(name)
        self._end()

    # ---------------------------------------------------------------- expansions

    def _expansions(self, terminal: bool) -> Node:
        options = [self._alternative(terminal)]
        while self._peek() and self._peek().text == "|":
            self._take()
            options.append(self._alternative(terminal))
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def _alternative(self, terminal: bool) -> Node:
        items: list[Node] = []
        while self._peek() and self._peek().text not in ("|", ")", "]") and self._peek().kind != "arrow":
            items.append(self._item(terminal))
        if self._peek() and self._peek().kind == "arrow":  # `-> alias`: a tree-shaping name, no change in language
            self._take()
            self._take()
        items = [item for item in items if item != EMPTY]
        if not terminal and len(items) > 1:
            # %ignore'd text may stand between any two items (declared later in the file too: resolved by name)
            spaced: list[Node] = []
            for item in items:
                spaced += [_IGNORE_GAP, item] if spaced else [item]
            items = spaced
        return items[0] if len(items) == 1 else Seq(tuple(items)) if items else EMPTY

    def _item(self, terminal: bool) -> Node:
        node = self._atom(terminal)
        while self._peek() and self._peek().text in ("?", "*", "+", "~"):
            op = self._take().text
            if op == "~":
                low = self._count()
                high = low
                if self._peek() and self._peek().kind == "range":
                    self._take()
                    high = self._count()
                if high < low:
                    raise self.error(f"has the repetition '~ {low}..{high}' with its bounds reversed.")
                node = self._repeat(node, low, high, terminal)
            else:
                node = self._repeat(node, 1 if op == "+" else 0, 1 if op == "?" else None, terminal)
        return node

    def _repeat(self, node: Node, low: int, high: int | None, terminal: bool) -> Node:
        """Repetition, with %ignore'd text between the repeats in a rule: `x (gap x){low-1,high-1}`."""
        if terminal or high == 1:
            return Repeat(node, low, high)
        rest = Repeat(Seq((_IGNORE_GAP, node)), max(low - 1, 0), None if high is None else high - 1)
        once = Seq((node, rest))
        return once if low >= 1 else Repeat(once, 0, 1)

    def _count(self) -> int:
        token = self._take()
        if token.kind != "number" or token.text.startswith(("+", "-")):
            raise self.error(f"has '{token.text}' where a repetition count was expected.")
        return int(token.text)

    def _atom(self, terminal: bool) -> Node:
        token = self._take()
        if token.kind == "string":
            return self._string(token)
        if token.kind == "regexp":
            return self._regexp(token.text)
        if token.kind == "name":
            if self._peek() and self._peek().text == "{":
                raise self.unsupported(f"a template ('{token.text}{{...}}')")
            return Ref(token.text)
        if token.text in ("(", "["):
            closing = ")" if token.text == "(" else "]"
            inner = self._expansions(terminal)
            self._expect(closing)
            return inner if closing == ")" else Repeat(inner, 0, 1)
        if token.text == "%":
            following = self._peek()
            raise self.unsupported(f"'%{following.text if following else ''}' inside a rule")
        if token.text == "<":
            raise self.unsupported("special tokens ('<...>')")
        if token.text in ("&", "~"):
            raise self.unsupported(f"the operator '{token.text}'")
        raise self.error(f"has '{token.text}' where an item was expected, in: {self._shown()}")

    def _string(self, token: _Token) -> Node:
        text, ignore_case = self._string_value(token)
        if self._peek() and self._peek().kind == "range":
            self._take()
            end = self._take()
            if end.kind != "string":
                raise self.error(f"has a range '{token.text}..{end.text}' that does not end in a string.")
            last, _ = self._string_value(end)
            if len(text) != 1 or len(last) != 1 or ord(last) < ord(text):
                raise self.error(f"has a bad character range '{token.text}..{end.text}'.")
            return Chars(((ord(text), ord(last)),))
        return folded_text(text) if ignore_case and text else Text(text)

    def _string_value(self, token: _Token) -> tuple[str, bool]:
        ignore_case = token.text.endswith("i")
        quoted = token.text[:-1] if ignore_case else token.text
        try:
            return ast.literal_eval(quoted), ignore_case
        except (ValueError, SyntaxError):
            raise self.error(f"has a bad string {token.text}.") from None

    def _regexp(self, text: str) -> Node:
        end = text.rindex("/")
        pattern, flags = text[1:end].replace("\\/", "/"), text[end + 1:]
        unknown = sorted(set(flags) - set("ismu"))
        if unknown:
            raise self.unsupported(f"the regex flag '{unknown[0]}' (in {text})")
        return regex_node(pattern, self.param, ignore_case="i" in flags, dot_all="s" in flags,
                          context=f"regex {text[:60]} of the Lark grammar")


_IGNORE_GAP = Ref(IGNORED)


@functools.cache
def _common() -> LarkReader:
    """The `common` module's terminals, read once."""
    reader = LarkReader(COMMON, "common")
    for statement in reader._statements:
        reader._tokens_at, reader._at = statement, 0
        reader._definition()
    return reader


def lark_grammar(definition: str, param: str) -> TextGrammar:
    grammar = LarkReader(definition, param).read()
    if IGNORED not in grammar.rules:  # no %ignore: the gaps between items are empty
        grammar = TextGrammar({name: _without_gaps(node) for name, node in grammar.rules.items()}, grammar.start)
    return grammar


def _without_gaps(node: Node) -> Node:
    if node == _IGNORE_GAP:
        return EMPTY
    if isinstance(node, Seq):
        items = tuple(item for item in (_without_gaps(item) for item in node.items) if item != EMPTY)
        return items[0] if len(items) == 1 else Seq(items) if items else EMPTY
    if isinstance(node, Alt):
        return Alt(tuple(_without_gaps(option) for option in node.options))
    if isinstance(node, Repeat):
        return Repeat(_without_gaps(node.item), node.low, node.high)
    return node
