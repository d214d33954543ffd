"""Custom tools' Lark and regex grammars as GBNF: the language kept (checked by xgrammar's GBNF matcher against `lark`
and `re` on the same texts), JSON-escaped inside a call's JSON string, and what cannot be enforced refused by name."""

import json
import re

import lark
import pytest
from xgrammar.testing import _is_grammar_accept_string as accepts

from api.pipeline.choice_output import ChoiceOutput, CustomCallInput, CustomCallStarted
from chat.custom_tools import InputDecoder, custom_input
from chat.grammars import tool_call_grammar
from chat.tool_formats import GEMMA4, HERMES, MISTRAL_V7, QWEN_XML
from chat.tools import build_tool_plan
from errors import InvalidRequest
from tests.custom_tool_grammars import CHAT_CUSTOM_TOOLS, DATE_REGEX, PATCH_GRAMMAR

PARAM = "tools[0].custom.format"


def gbnf_of(syntax: str, definition: str, json_escaped: bool = False) -> str:
    given = custom_input({"type": "grammar", "grammar": {"syntax": syntax, "definition": definition}}, PARAM)
    root, rules = given.rules("t", json_escaped)
    return "\n".join([f"root ::= {root}"] + [f"{name} ::= {body}" for name, body in rules.items()])


def refusal(syntax: str, definition: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        gbnf_of(syntax, definition)
    assert refused.value.param == PARAM
    return refused.value


PATCHES = [
    "*** Begin Patch\n*** Add File: notes.txt\n+hello\n*** End Patch\n",
    "*** Begin Patch\n*** Delete File: a/b.py\n*** Add File: c\n+x\n+\"quoted\" \\ back\n*** End Patch",
    "*** Begin Patch\n*** End Patch\n",  # no hunk
    "*** Begin Patch\n*** Add File: notes.txt\n*** End Patch\n",  # an added file needs a line
    "*** Begin Patch\n*** Add File: notes.txt\n+a\n+b\n+c\n+d\n*** End Patch\n",  # at most 3 lines
    "*** Begin Patch\n*** Add File: n\n+\n*** End Patch\n",  # a line holds at least one character
    "*** Begin Patch\n*** Delete File: x\n*** End Patch\n\n",
]


@pytest.mark.parametrize("text", PATCHES)
def test_a_lark_grammar_accepts_what_lark_parses_raw_and_json_escaped(text):
    try:
        lark.Lark(PATCH_GRAMMAR).parse(text)
        expected = True
    except lark.exceptions.LarkError:
        expected = False
    assert accepts(gbnf_of("lark", PATCH_GRAMMAR), text) is expected
    assert accepts(gbnf_of("lark", PATCH_GRAMMAR, json_escaped=True), json.dumps(text)[1:-1]) is expected


@pytest.mark.parametrize("text", ["2026-03-03", "0000-00-00", "2026-3-03", "2026-03-031", " 2026-03-03", "2026/03/03"])
def test_a_regex_accepts_exactly_its_full_matches(text):
    assert accepts(gbnf_of("regex", DATE_REGEX), text) is bool(re.fullmatch(DATE_REGEX, text))


@pytest.mark.parametrize(("pattern", "texts"), [
    (r"^(?:ab|c)+[x-z]?$", ["ab", "cabc", "abz", "", "abzz", "b"]),
    (r"(?P<word>\w+)\s\d{2,}", ["ab_1 12", "a 123", "a 1", "a\t99", "-a 12"]),
    (r"[^a-c\d]{1,3}\.", ["x.", "xyz.", "a.", "1.", "wxyz."]),
    (r"colou?r|gr[ae]y", ["color", "colour", "grey", "gray", "grby"]),
    (r"\x41\u{1F600}[[:digit:]]", ["A\U0001F6009", "A\U0001F600x"]),
    (r'say "\\" .', ['say "\\" x', 'say "\\" \n', 'say \\ x']),
])
def test_regex_constructs_keep_their_language(pattern, texts):
    raw, escaped = gbnf_of("regex", pattern), gbnf_of("regex", pattern, json_escaped=True)
    # (Python's `re` spells Rust's `\u{...}` and POSIX classes its own way)
    python_pattern = pattern.replace("\\u{1F600}", "\U0001F600").replace("[[:digit:]]", "[0-9]")
    for text in texts:
        expected = bool(re.fullmatch(python_pattern, text))
        assert accepts(raw, text) is expected, text
        assert accepts(escaped, json.dumps(text, ensure_ascii=False)[1:-1]) is expected, text


def test_a_lark_grammar_with_ignored_whitespace_common_imports_and_case_insensitive_literals():
    grammar = r"""
        start: "select"i field ("," field)* ";"?
        field: CNAME | ESCAPED_STRING
        %import common (CNAME, ESCAPED_STRING)
        %import common.WS
        %ignore WS
    """
    gbnf = gbnf_of("lark", grammar)
    parser = lark.Lark(grammar)
    for text in ['SELECT a, b', 'select  "x y" ,c ;', ' Select a', 'select a b', 'selecta', 'select "a']:
        try:
            parser.parse(text)
            expected = True
        except lark.exceptions.LarkError:
            expected = False
        assert accepts(gbnf, text) is expected, text


@pytest.mark.parametrize(("syntax", "definition", "construct"), [
    ("lark", 'start: %json {"type": "object"}', "%json"),
    ("lark", "start: <[128000]>", "special tokens"),
    ("lark", "%llguidance {}\nstart: \"a\"", "%llguidance"),
    ("lark", "start: x\nx[lazy]: \"a\"", "attributes"),
    ("lark", "start: list{x}\nx: \"a\"", "template"),
    ("lark", "start: \"a\"\n%import python (NAME)", "'python'"),
    ("lark", "start: sum\nsum: sum \"+\" \"1\" | \"1\"", "Left recursion"),
    ("lark", "start: (\"a\"?)*", "empty text"),
    ("lark", "begin: \"a\"", "no 'start' rule"),
    ("lark", "start: other", "'other', which it does not define"),
    ("lark", "start: /a(?=b)/", "lookaround"),
    ("regex", r"\bword\b", "word boundary"),
    ("regex", r"(a)\1", "backreference"),
    ("regex", r"(?i)abc", "inline flags"),
    ("regex", r"\p{Greek}+", "Unicode class"),
    ("regex", r"a^b", "anchor '^'"),
    ("regex", r"[a-z&&[^aeiou]]", "class set operation"),
    ("regex", r"a{2000}", "Repetition counts above"),
    ("regex", r"(ab", "unclosed '('"),
])
def test_what_cannot_be_enforced_is_a_400_naming_the_construct(syntax, definition, construct):
    assert construct in refusal(syntax, definition).message


def test_a_custom_tool_is_a_function_with_one_string_input_described_by_its_grammar():
    plan = build_tool_plan(CHAT_CUSTOM_TOOLS, {"type": "custom", "custom": {"name": "pick_date"}}, None)
    [tool] = plan.tools
    assert plan.mode == "named" and tool.name == "pick_date" and tool.custom.syntax == "regex"
    assert tool.parameters["required"] == ["input"] and DATE_REGEX in tool.parameters["properties"]["input"][
        "description"]
    text_tool = build_tool_plan([{"type": "custom", "custom": {"name": "shell"}}], "required", None).tools[0]
    assert text_tool.custom.grammar is None and text_tool.parameters["properties"]["input"]["type"] == "string"


@pytest.mark.parametrize(("call_format", "call", "wrong"), [
    (HERMES, '<tool_call>{"name": "pick_date", "arguments": {"input": "2026-03-03"}}</tool_call>', "2026-3-03"),
    (MISTRAL_V7, '[TOOL_CALLS]pick_date[ARGS]{"input": "2026-03-03"}', "2026-03-0x"),
    (QWEN_XML, ("<tool_call>\n<function=pick_date>\n<parameter=input>\n2026-03-03\n</parameter>\n</function>\n"
                "</tool_call>"), "03-03-2026"),
])
def test_the_call_grammar_holds_the_input_to_its_language_in_each_kind_of_format(call_format, call, wrong):
    plan = build_tool_plan(CHAT_CUSTOM_TOOLS, "required", False)
    gbnf = tool_call_grammar(plan, call_format, lazy=False).gbnf
    assert accepts(gbnf, call)
    assert not accepts(gbnf, call.replace("2026-03-03", wrong))
    patch = PATCHES[1]
    if call_format.xml_parameters is None:
        patch_call = call.replace("pick_date", "apply_patch").replace('"2026-03-03"', json.dumps(patch))
    else:
        patch_call = call.replace("pick_date", "apply_patch").replace("2026-03-03", patch)
    assert accepts(gbnf, patch_call)


def test_formats_with_their_own_string_quoting_refuse_a_grammar_and_take_free_text():
    with pytest.raises(InvalidRequest, match="gemma4"):
        tool_call_grammar(build_tool_plan(CHAT_CUSTOM_TOOLS, "required", False), GEMMA4, lazy=False)
    free = build_tool_plan([{"type": "custom", "custom": {"name": "shell"}}], "required", False)
    assert tool_call_grammar(free, GEMMA4, lazy=False).gbnf


def test_the_input_decoder_gives_the_same_text_whatever_the_fragments():
    text = 'line "one"\n\ttab \\ back \u00e9 \U0001F600 \x01'
    arguments = json.dumps({"input": text})
    assert InputDecoder().feed(arguments) == text
    decoder = InputDecoder()
    assert "".join(decoder.feed(char) for char in arguments) == text and decoder.done


def test_choice_output_turns_a_custom_tools_call_into_its_raw_input_as_it_streams():
    output = ChoiceOutput(build_tool_plan(CHAT_CUSTOM_TOOLS, "required", False), HERMES)
    generated = '<tool_call>{"name": "apply_patch", "arguments": {"input": "+a\\n+\\"b\\""}}</tool_call>'
    events = [event for index in range(0, len(generated), 5) for event in output.read(generated[index:index + 5])]
    events += output.finish()
    assert isinstance(events[0], CustomCallStarted) and events[0].name == "apply_patch"
    assert "".join(event.fragment for event in events if isinstance(event, CustomCallInput)) == '+a\n+"b"'
    assert output.custom_input(output.calls[0]) == '+a\n+"b"'
    assert output.finish_reason("stop") == "tool_calls"
