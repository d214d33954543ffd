"""The Jinja environment chat templates render in: the one transformers renders them in (its `apply_chat_template`),
so a template written and tested against transformers renders here byte for byte, and still sandboxed.

Templates shipped inside model files are untrusted code (CVE-2024-34359 was exactly this): the environment is
Jinja's immutable sandbox (no attribute writes, no `list.append`, no dunder access), as transformers' is, with the
same extensions (loop controls: `{% break %}` / `{% continue %}`; transformers' `{% generation %}` tag, which marks
the assistant's tokens for training and renders its body unchanged), filters and globals (`tojson` with its
keyword arguments, `raise_exception`, `strftime_now`, a `dict` and a `namespace` that refuse underscore names).
"""

from __future__ import annotations

import datetime
import json

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from errors import InvalidRequest


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: the body, as it is (transformers uses the tag only to find which
    characters the assistant wrote)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller) -> str:
        return caller()


def to_json(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers' tojson: plain JSON, non-ASCII kept (Jinja's own escapes <, > and & for HTML, which prompts
    # do not want), with json.dumps' own options.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message: str) -> None:
    # The template refuses this conversation: the request's fault, said as the template says it.
    raise InvalidRequest(f"The chat template rejected the conversation: {message}", param="messages")


def strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class TemplateDict:
    """`dict(...)` for templates, without the class itself (no type tricks from inside the sandbox)."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs) -> dict:
        return dict.fromkeys(*args, **kwargs)


class TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's `namespace`, refusing underscore-prefixed names (no reaching CPython internals through it)."""

    def __init__(*args, **kwargs):  # Jinja's own signature trick, so `namespace(self=...)` works
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name, value) -> None:
        TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a template may not store {name!r} on a namespace")


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox, plus a bound on what one operation may build: `'x' * 10**9` in a hostile template
    would take the server's memory (a prompt never needs a string or list this long from one operation)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator: str, left, right):
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise jinja2.exceptions.SecurityError(f"a template may not raise to the power {right}")
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, (str, list, tuple)) and isinstance(times, int) and \
                    len(sequence) * times > MAX_REPEATED_LENGTH:
                raise jinja2.exceptions.SecurityError("a template may not build a sequence this long")
        return super().call_binop(context, operator, left, right)


MAX_REPEATED_LENGTH = 1_000_000
MAX_EXPONENT = 1_000


def new_environment() -> ImmutableSandboxedEnvironment:
    env = TemplateSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = to_json
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env
