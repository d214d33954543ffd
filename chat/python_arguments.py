"""Tool calls written as Python function calls, as LFM 2.5's chat template writes them:

    <|tool_call_start|>[get_weather(city='Paris', days=3), get_time()]<|tool_call_end|>

Keyword arguments with Python literals (text in quotes, `True`/`False`/`None`; an object as the template's `tojson`
writes it). `PythonArguments` reads one call's arguments back into the JSON clients get, once its closing
parenthesis comes (Python's own parser reads them); PYTHON_NOTATION is their grammar (chat/notation_grammar.py).
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import tokenize
from dataclasses import dataclass
from typing import Any

from chat.closing_text import unwritten
from chat.notation_grammar import Notation

_NAMED_CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}


def python_text(value: Any) -> str:
    """A value as a Python literal (an object as JSON, as the template writes it)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(python_text(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def arguments_text(arguments: dict) -> str:
    """A call's keyword arguments, without the parentheses."""
    return ", ".join(f"{key}={python_text(value)}" for key, value in arguments.items())


def arguments_end(text: str) -> int | None:
    """Where the arguments `text` starts with end: the index of their closing parenthesis (None: still open)."""
    _, _, unmatched = _brackets(text)
    return unmatched if unmatched is not None and text[unmatched] == ")" else None


_CLOSER = {"(": ")", "[": "]", "{": "}"}


def _brackets(text: str) -> tuple[list[str], str, int | None]:
    """Python text read up to its first unmatched closing bracket: (the closers of the brackets still open, the
    quote of a string still open, where that unmatched bracket is, None if there is none)."""
    stack: list[str] = []
    quote, position = "", 0
    while position < len(text):
        char = text[position]
        if quote:
            if char == "\\":
                position += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _CLOSER:
            stack.append(_CLOSER[char])
        elif char in ")]}":
            if not stack:
                return stack, quote, position
            stack.pop()
        position += 1
    return stack, quote, None


def parse_arguments(text: str) -> dict[str, Any]:
    """Keyword arguments (`city='Paris', days=3`) as a dict (ValueError when they are not keyword literals)."""
    source, renamed = _keywords_renamed(f"f({text})")
    try:
        call = ast.parse(source, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(call, ast.Call) or call.args or any(argument.arg is None for argument in call.keywords):
        raise ValueError("only keyword arguments")
    return {renamed.get(argument.arg, argument.arg): _literal(argument.value) for argument in call.keywords}


def _keywords_renamed(source: str) -> tuple[str, dict[str, str]]:
    """A parameter may be named as a Python keyword (`from=`, `if=`), which Python's parser refuses as an argument
    name: such names become placeholders (found as tokens, so text inside strings is never touched)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source, {}
    renamed: dict[str, str] = {}
    lines = source.split("\n")
    for token, following in reversed(list(zip(tokens, tokens[1:]))):
        if token.type == tokenize.NAME and keyword.iskeyword(token.string) and following.string == "=":
            placeholder = f"_keyword_{len(renamed)}_"
            renamed[placeholder] = token.string
            (row, start), (_, end) = token.start, token.end
            lines[row - 1] = lines[row - 1][:start] + placeholder + lines[row - 1][end:]
    return "\n".join(lines), renamed


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMED_CONSTANTS:  # (JSON's words inside a `tojson` object too)
        return _NAMED_CONSTANTS[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
        return {str(_literal(key)): _literal(value) for key, value in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    raise ValueError(f"not a literal: {ast.dump(node)[:40]}")


@dataclass
class PythonArguments:
    """Reads one call's arguments (after its opening parenthesis): the JSON object, whole, once they close."""

    done: bool = False
    invalid: bool = False  # they closed but are not keyword literals: the call stays incomplete

    def feed(self, buffer: str) -> tuple[list[str], int]:
        end = None if self.done else arguments_end(buffer)
        if end is None:
            return [], 0
        self.done = True
        try:
            return [json.dumps(parse_arguments(buffer[:end]), ensure_ascii=False)], end + 1
        except ValueError:
            self.invalid = True
            return [], end + 1

    @staticmethod
    def waiting(buffer: str) -> bool:
        return True  # (anything may still come before the closing parenthesis)


PYTHON_NOTATION = Notation(
    prefix="py",
    rules={
        "py-value": 'py-string | py-number | py-object | py-list | "True" | "False" | "None"',
        "py-string": r"""( "'" ( [^'\\\n] | "\\" [^\n] )* "'" ) | ( "\"" ( [^"\\\n] | "\\" [^\n] )* "\"" )""",
        "py-number": r'"-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
        "py-object": '"{" ( py-member ( ", " py-member )* )? "}"',
        "py-member": 'py-string ": " py-value',  # (a key in either quotes, as `tojson` or Python writes it)
        "py-list": '"[" ( py-value ( ", " py-value )* )? "]"',
    },
    text_of=python_text,
    member=lambda key: json.dumps(key) + ": ",
    true="True", false="False", null="None", separator=", ",
)


@dataclass(frozen=True)
class PythonClosing:
    """What closes a section of Python calls from where the answer stands: the open text, the open brackets (the
    call's parenthesis, the list's), the section's end marker (as GemmaClosing does for Gemma 4's calls)."""

    section_open: str
    end_marker: str  # after the list's closing bracket

    def remaining(self, answer: str) -> str:
        start = answer.rfind(self.section_open)
        section = answer[start + len(self.section_open):] if start >= 0 else ""
        if self.end_marker in section:
            return ""
        stack, quote, _ = _brackets(section)
        target = quote + "".join(reversed(stack)) + self.end_marker
        return unwritten(answer, target)
