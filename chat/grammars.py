"""GBNF grammars that make model output valid by construction: tool calls and JSON-schema answers.

Schemas become GBNF through llama-cpp-python's `llama_grammar.SchemaConverter` (a port of llama.cpp's own
converter). Schema features it cannot enforce: see chat/schema_support.py (a 400 for strict schemas, left out
with a logged warning otherwise).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from chat.custom_tools import INPUT_KEY
from chat.element_arguments import ElementClosing, elements_rule
from chat.gbnf_text import literal
from chat.gemma_arguments import GemmaClosing, gemma_object_rule
from chat.grammar_shortest import shortest_text
from chat.notation_grammar import fields_rule
from chat.python_arguments import PYTHON_NOTATION, PythonClosing
from chat.schema_refs import embeddable, self_contained
from chat.schema_support import enforceable, map_values
from chat.tool_formats import ToolCallFormat
from chat.tools import ToolPlan, ToolSpec
from chat.xml_arguments import TagClosing, XmlParameters, parameters_rule, tag_closing
from errors import InvalidRequest, ServerError

if TYPE_CHECKING:
    from llama_cpp.llama_grammar import SchemaConverter


@dataclass(frozen=True)
class GrammarSpec:
    """A GBNF grammar (root rule `root`) the output must follow; with `lazy_triggers` (regexes over the
    generated text) it applies only from the first trigger's match on."""

    gbnf: str
    lazy_triggers: tuple[str, ...] = ()
    # Logits added to ending the answer wherever the grammar allows it (after each complete tool call): small
    # models otherwise repeat the call they just made until the call limit.
    end_bonus: float = 0.0
    # How budget closing closes an answer of XML-like calls (None: JSON, closed by quotes and brackets)
    tag_closing: TagClosing | GemmaClosing | PythonClosing | ElementClosing | None = None

    def __post_init__(self) -> None:
        # llama.cpp's grammar engine recurses over rules: a huge grammar can crash the whole process.
        if len(self.gbnf) > MAX_GRAMMAR_BYTES:
            raise InvalidRequest(f"The grammar is too large ({len(self.gbnf)} characters; at most "
                                 f"{MAX_GRAMMAR_BYTES}): simplify the schema or grammar.", param="grammar")

    def without_optional_space(self) -> GrammarSpec:
        """The same language without the optional whitespace between JSON tokens (the schema converter's `space`
        rule): for a budget with little room beyond the shortest answer, where a small model's ` : ` would cost
        the tokens that close the JSON."""
        compact = _OPTIONAL_SPACE_RULE.sub('space ::= ""', self.gbnf)
        return self if compact == self.gbnf else replace(self, gbnf=compact)

    @cached_property
    def shortest(self) -> str | None:
        """The shortest text the grammar accepts (the smallest valid answer), None if it cannot be told."""
        return shortest_text(self.gbnf)


MAX_GRAMMAR_BYTES = 256 * 1024
_OPTIONAL_SPACE_RULE = re.compile(r'^space ::= " "\?$', re.MULTILINE)


MAX_PARALLEL_CALLS = 4  # bounds a model that would otherwise emit calls until max_tokens
# With parallel calls allowed by default, another call must beat ending the answer by this many logits: small
# models otherwise repeat the call they just made up to MAX_PARALLEL_CALLS times (measured on both embedded models:
# 4 calls, 1-2 distinct; with 3.0: 1 call, except gemma's Paris-and-London, 2 distinct).
NEXT_CALL_THRESHOLD = 3.0

def _closed_objects(schema: Any) -> Any:
    """Objects that list their properties and say nothing of others get `additionalProperties: false`, so
    a small model spends its tokens on the declared fields (the output still validates against the original)."""
    if isinstance(schema, dict):
        schema = {key: map_values(key, value, _closed_objects) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed_objects(item) for item in schema]
    return schema


def _converter() -> SchemaConverter:
    # Imported here: llama_cpp loads its shared library on import, and the HTTP layer imports this module.
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False, raw_pattern=False)


def _compact_whitespace(gbnf: str) -> str:
    # The converter allows up to 20 spaces/newlines between tokens; a weak model wanders there. One space is enough.
    gbnf = re.sub(r"(?m)^space ::= .*$", 'space ::= " "?', gbnf)
    # Its string characters admit raw control characters, which JSON forbids (they must be escaped).
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')


@contextmanager
def _schema_errors(param: str) -> Iterator[None]:
    """The converter raises plain errors for schemas it cannot handle: they are the request's 400."""
    try:
        yield
    except InvalidRequest:
        raise
    except Exception as exc:
        raise InvalidRequest(f"This JSON schema cannot be turned into a grammar: {exc}", param=param) from None


def _convert(schema: dict, rule_name: str, param: str) -> SchemaConverter:
    """`schema` must already be `enforceable` (chat/schema_support.py)."""
    converter = _converter()
    with _schema_errors(param):
        resolved = converter.resolve_refs(_closed_objects(copy.deepcopy(schema)), "request")
        converter.visit(resolved, rule_name)
    return converter


def json_schema_grammar(schema: dict, param: str = "response_format", strict: bool = False) -> GrammarSpec:
    schema = self_contained(enforceable(schema, param, strict))
    return GrammarSpec(_compact_whitespace(_convert(schema, "", param).format_grammar()))


JSON_OBJECT_SCHEMA = {"type": "object"}


def tool_call_schema(plan: ToolPlan, arguments_key: str = "arguments", name_key: str | None = "name",
                     id_key: str = "") -> dict:
    """One call: {"name": <one of the tools>, "<arguments key>": <that tool's parameters>} (with the format's own
    keys, and a call id first where it writes one). Each tool's own definitions (`$defs`) move to the wrapper's
    root under the tool's name, so its references still resolve."""
    parameters, definitions = _tool_parameters(plan)
    if name_key is None:  # the name as the key of its arguments (Apertus)
        options = [{"type": "object", "properties": {tool.name: schema}, "required": [tool.name]}
                   for tool, schema in zip(plan.tools, parameters, strict=True)]
        wrapper = options[0] if len(options) == 1 else {"anyOf": options}
        return {**wrapper, "$defs": definitions} if definitions else wrapper
    call_id = {id_key: {"type": "string", "pattern": "^[0-9]{1,2}$"}} if id_key else {}
    options = [{"type": "object", "properties": {**call_id, name_key: {"const": tool.name}, arguments_key: schema},
                "required": [*call_id, name_key, arguments_key]}
               for tool, schema in zip(plan.tools, parameters, strict=True)]
    wrapper = options[0] if len(options) == 1 else {"anyOf": options}
    return {**wrapper, "$defs": definitions} if definitions else wrapper


def _tool_parameters(plan: ToolPlan) -> tuple[list[dict], dict]:
    """Each tool's enforceable parameters schema, and all their own definitions (`$defs`), moved under the tool's
    name so one root holds them all and every reference still resolves."""
    parameters, definitions = [], {}
    for position, tool in enumerate(plan.tools):
        if _constrained_input(tool):  # a custom tool's input: a string whose rule `_add_custom_inputs` replaces
            parameters.append({"type": "object", "properties": {INPUT_KEY: {"$ref": f"#/$defs/{_input_rule(position)}"}},
                               "required": [INPUT_KEY]})
            # (a constant, which the converter gives a rule of the definition's own name: a plain string it would not)
            definitions[_input_rule(position)] = {"const": INPUT_KEY}
            continue
        schema, tool_definitions = embeddable(enforceable(tool.parameters, "tools", tool.strict), tool.name)
        definitions.update(tool_definitions)
        parameters.append(schema)
    return parameters, definitions


def _constrained_input(tool: ToolSpec) -> bool:
    return tool.custom is not None and tool.custom.grammar is not None


def _input_rule(position: int) -> str:
    return f"custom-tool-input-{position}"


def _add_custom_inputs(converter: SchemaConverter, plan: ToolPlan) -> None:
    """Each grammar-constrained custom tool's `input` string (the converter's rule for it, named after its `$defs`
    entry): the grammar's language, JSON-escaped between the string's quotes."""
    for position, tool in enumerate(plan.tools):
        if not _constrained_input(tool):
            continue
        root, rules = tool.custom.rules(f"custom-tool-{position}", json_escaped=True)
        if _input_rule(position) not in converter._rules:
            raise ServerError(f"The grammar of custom tool '{tool.name}' could not be placed in its call.")
        converter._rules.update(rules)
        converter._rules[_input_rule(position)] = f'"\\"" {root} "\\"" space'


def _raw_input(converter: SchemaConverter, tool: ToolSpec, position: int, syntax: XmlParameters) -> str:
    """A custom tool's call in an XML-like format: its one parameter, the grammar's language as is."""
    root, rules = tool.custom.rules(f"custom-tool-{position}", json_escaped=False)
    converter._rules.update(rules)
    terminator = syntax.close.lstrip()
    line_break = f"{literal(syntax.close[:-len(terminator)])}? " if len(syntax.close) > len(terminator) else ""
    return (f"{literal(syntax.open + INPUT_KEY + syntax.name_close_for('string'))} {root} {line_break}"
            f"{literal(terminator)} {literal(syntax.end)}")


def _refuse_unconstrainable(plan: ToolPlan, call_format: ToolCallFormat) -> None:
    """Formats whose arguments are neither JSON nor XML-like parameters have their own string quoting (Gemma 4's,
    Python's, elements'): a custom tool's grammar is not placed inside those."""
    if call_format.gemma_arguments or call_format.python_arguments or call_format.element_marker:
        for tool in plan.tools:
            if _constrained_input(tool):
                raise InvalidRequest(f"Custom tool '{tool.name}': a grammar for its input cannot be enforced in this "
                                     f"model's tool-call format ({call_format.name}); use the text format.",
                                     param="tools")


def _named_calls(plan: ToolPlan, call_format: ToolCallFormat) -> SchemaConverter:
    """`call` for formats that write the name outside the JSON: the opening, one tool's name and, after the name's
    closing marker, that tool's arguments (a rule per tool)."""
    options, definitions = _tool_parameters(plan)
    converter = _converter()
    with _schema_errors("tools"):
        resolved = converter.resolve_refs(_closed_objects({"anyOf": options, "$defs": definitions}), "request")
        for index, (tool, parameters) in enumerate(zip(plan.tools, resolved["anyOf"], strict=True)):
            if call_format.gemma_arguments:
                reference = gemma_object_rule(converter, parameters, f"arguments-{index}")
                if reference != f"arguments-{index}":
                    converter._add_rule(f"arguments-{index}", reference)
            elif call_format.python_arguments:  # keyword arguments, then the call's closing parenthesis
                fields = fields_rule(converter, PYTHON_NOTATION, parameters, f"arguments-{index}-fields",
                                     key=lambda name: f"{name}=", separator=", ")
                converter._add_rule(f"arguments-{index}", f'{fields} ")"')
            elif call_format.xml_parameters is not None and _constrained_input(tool):
                converter._add_rule(f"arguments-{index}", _raw_input(converter, tool, index, call_format.xml_parameters))
            elif call_format.element_marker:
                reference = elements_rule(converter, parameters, call_format.element_marker, f"arguments-{index}",
                                          tool.strict)
                converter._add_rule(f"arguments-{index}", reference)
            elif call_format.xml_parameters is None:
                reference = converter.visit(parameters, f"arguments-{index}")
                if reference != f"arguments-{index}":  # (a schema the converter names by its own rule)
                    converter._add_rule(f"arguments-{index}", reference)
            else:  # the parameters as XML-like tags, then the function's closing tag
                rule = parameters_rule(converter, parameters, call_format.xml_parameters, f"arguments-{index}",
                                       tool.strict)
                converter._add_rule(f"arguments-{index}", f"{rule} {literal(call_format.xml_parameters.end)}")
    if call_format.xml_parameters is None:  # (JSON arguments: the input is a JSON string)
        _add_custom_inputs(converter, plan)
    index = ""
    if call_format.call_index:  # (the call's index in the turn: Kimi K2, K3)
        before, after = call_format.call_index.split("{}")
        index = f"{literal(before)} [0-9]{{1,2}} {literal(after)} "
    names = " | ".join(f"{literal(tool.name)} {index}{literal(call_format.name_close)} arguments-{position}"
                       for position, tool in enumerate(plan.tools))
    call_id = f'[a-zA-Z0-9_-]{{1,24}} {literal(call_format.id_before_name)} ' if call_format.id_before_name else ""
    # (a recipient format's call_open goes between calls: the prompt opened the first)
    call_open = "" if call_format.content_recipient else call_format.call_open
    converter._add_rule("call", f"{literal(call_open + call_format.name_open)} {call_id}( {names} ) "
                                f"{literal(call_format.call_close)}")
    return converter


def tool_call_grammar(plan: ToolPlan, call_format: ToolCallFormat, *, lazy: bool) -> GrammarSpec:
    """Calls in the model's own format, once or (parallel) up to MAX_PARALLEL_CALLS times.

    Lazy (tool_choice auto): free text until the model opens a call, then the call must be valid."""
    _refuse_unconstrainable(plan, call_format)
    if call_format.names_outside:
        converter = _named_calls(plan, call_format)
    else:
        name_key = None if call_format.name_as_key else call_format.name_key
        schema = tool_call_schema(plan, call_format.arguments_key, name_key, call_format.id_key)
        converter = _convert(schema, "call-json", "tools")
        _add_custom_inputs(converter, plan)
        converter._add_rule("call", f"{literal(call_format.call_open)} call-json {literal(call_format.call_close)}")
    between = call_format.call_open if call_format.content_recipient else call_format.separator
    repeat = f" ({literal(between)} call){{0,{MAX_PARALLEL_CALLS - 1}}}" if plan.parallel else ""
    prefix = f"{literal(call_format.optional_prefix)}? " if lazy and call_format.optional_prefix else ""
    if call_format.content_recipient and lazy:  # (a later recipient's `>>>` starts the lazy grammar too)
        prefix += f"{literal(call_format.call_open)}? "
    if call_format.header:  # after a reasoning block the model opens a new message before its calls
        prefix += f"{literal(call_format.header)}? "
    if call_format.recipient_header:  # (muse: the message's header names the tool the call is for)
        opening, closing = call_format.recipient_header
        recipients = " | ".join(literal(tool.name) for tool in plan.tools)
        prefix += f"( {literal(opening)} ( {recipients} ) {literal(closing)} )? "
    opening = literal(call_format.section_open + call_format.list_open)
    converter._add_rule("root", f"{prefix}{opening} call{repeat} {literal(call_format.section_close)}")
    gbnf = _compact_whitespace(converter.format_grammar())
    if lazy:
        if call_format.content_recipient:
            return GrammarSpec(gbnf, call_format.recipient_triggers([tool.name for tool in plan.tools]))
        return GrammarSpec(gbnf, call_format.lazy_triggers())
    closing = call_format.xml_parameters and tag_closing(call_format.xml_parameters, call_format.call_close,
                                                         call_format.section_close)
    if call_format.gemma_arguments:
        closing = GemmaClosing(call_format.call_open, call_format.call_close)
    if call_format.element_marker:
        closing = ElementClosing(call_format.element_marker, call_format.call_open,
                                 call_format.call_close + call_format.section_close)
    if call_format.python_arguments:
        closing = PythonClosing(call_format.section_open, call_format.section_close.removeprefix("]"))
    # A client that asked for parallel calls explicitly gets them unhindered; by default a further call must be
    # clearly wanted.
    return GrammarSpec(gbnf, end_bonus=NEXT_CALL_THRESHOLD if plan.parallel and plan.parallel_by_default else 0.0,
                       tag_closing=closing or None)
