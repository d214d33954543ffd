"""Property-based tests for the tool-call detector: any text, any chunking, same answer as the whole text,
in every call format a template can teach."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.tool_call_parser import CallArguments, CallStarted, ContentText, ToolCallStreamParser, parse_tool_calls
from chat.tool_formats import (
    FORMATS,
    GENERIC,
    GLM,
    GLM_47,
    HERMES,
    LLAMA3,
    MINICPM,
    MISTRAL,
    PYTHONIC,
    detect_tool_call_format,
)

names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
formats = pytest.mark.parametrize("call_format", FORMATS, ids=lambda f: f.name)


def plain_text_for(call_format):
    """Text that cannot open calls in this format (nor holds its headers, which are never content)."""
    markers = call_format.entry_markers + call_format.content_markup
    # (in a recipient format a first line that is one word is the answer's recipient: a header, not text)
    header = re.compile(r"\s*[A-Za-z_][\w.\-]*\n") if call_format.content_recipient else re.compile("(?!)")
    return st.text(max_size=60).filter(
        lambda t: t and t.strip() == t and not any(m in t for m in markers) and not t.startswith("{")
        and not header.match(t)
    )


def stream(text: str, cuts: list[int], call_format, parameter_types=None):
    parser = ToolCallStreamParser(call_format, parameter_types)
    events, previous = [], 0
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)) + [len(text)]:
        events += parser.feed(text[previous:cut])
        previous = cut
    return events + parser.finish(), parser.calls


def content_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentText))


@formats
@settings(max_examples=60)
@given(text=st.text(max_size=200), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_text_streams_like_the_whole(call_format, text, cuts):
    whole_content, whole_calls = parse_tool_calls(text, call_format)
    events, calls = stream(text, cuts, call_format)
    assert content_of(events) == whole_content
    assert [(c.name, c.arguments, c.complete) for c in calls] == [(c.name, c.arguments, c.complete) for c in whole_calls]


@formats
@settings(max_examples=60)
@given(data=st.data())
def test_text_without_calls_is_all_content(call_format, data):
    text = data.draw(plain_text_for(call_format))
    assert parse_tool_calls(text, call_format) == (text, [])


# Formats whose argument keys are bare names (XML-like tags, Python keywords) are tried with names as keys.
NAMED_KEYS = [f for f in FORMATS if f.xml_parameters is not None or f.python_arguments]
ELEMENTS = [f for f in FORMATS if f.element_marker]  # (no None, and nested values read by their schemas)


@pytest.mark.parametrize("call_format", [f for f in FORMATS if f not in NAMED_KEYS + ELEMENTS], ids=lambda f: f.name)
@settings(max_examples=40)
@given(calls=st.lists(st.tuples(names, arguments), min_size=1, max_size=3), cuts=st.lists(st.integers(0), max_size=20),
       data=st.data())
def test_calls_are_recovered_in_order_with_exact_arguments(call_format, calls, cuts, data):
    # Bare-JSON formats only recognise calls at the very start of the output; the others after any text.
    prefix = "" if call_format.json_at_start else data.draw(plain_text_for(call_format))
    text = (prefix + " " if prefix else "") + call_format.render_calls(calls)
    events, parsed = stream(text, cuts, call_format)
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [(n, a) for n, a in calls]
    assert all(c.complete for c in parsed)
    assert content_of(events).strip() == prefix
    for index, call in enumerate(parsed):
        started = [e for e in events if isinstance(e, CallStarted) and e.index == index]
        fragments = [e.fragment for e in events if isinstance(e, CallArguments) and e.index == index]
        assert len(started) == 1 and started[0].id == call.id
        assert "".join(fragments) == call.arguments


xml_text = st.text(alphabet=st.characters(blacklist_characters="<\n\r", blacklist_categories=("Cs",)), max_size=10)
xml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | xml_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(xml_text, children, max_size=3), max_leaves=8)
SCHEMA_TYPE = {type(None): "null", bool: "boolean", int: "integer", str: "string", list: "array", dict: "object"}


@pytest.mark.parametrize("call_format", NAMED_KEYS, ids=lambda f: f.name)
@settings(max_examples=40)
@given(calls=st.lists(st.tuples(names, st.dictionaries(names, xml_values, max_size=4)), min_size=1, max_size=3,
                      unique_by=lambda call: call[0]), cuts=st.lists(st.integers(0), max_size=20), data=st.data())
def test_xml_parameters_are_recovered_with_their_schema_types(call_format, calls, cuts, data):
    """Qwen3-Coder style calls: each value is read back as the type its parameter's schema gives."""
    prefix = data.draw(plain_text_for(call_format))
    text = (prefix + " " if prefix else "") + call_format.render_calls(calls)
    types = {name: {key: {"type": SCHEMA_TYPE[type(value)]} for key, value in arguments.items()}
             for name, arguments in calls}
    events, parsed = stream(text, cuts, call_format, types)
    assert [(c.name, json.loads(c.arguments), c.complete) for c in parsed] == [(n, a, True) for n, a in calls]
    assert content_of(events).strip() == prefix


element_values = st.recursive(
    st.booleans() | st.integers() | xml_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(names, children, max_size=3), max_leaves=8)


def schema_of(value) -> dict:
    if isinstance(value, dict):
        return {"type": "object", "properties": {key: schema_of(item) for key, item in value.items()}}
    if isinstance(value, list):
        return {"type": "array", "items": schema_of(value[0]) if value else {}}
    return {"type": SCHEMA_TYPE[type(value)]}


def one_kind_of_items(value) -> bool:
    """Whether every list in `value` holds one kind of item (one `items` schema describes them)."""
    if isinstance(value, dict):
        return all(one_kind_of_items(item) for item in value.values())
    if isinstance(value, list):
        return len({json.dumps(schema_of(item)) for item in value}) <= 1 and all(map(one_kind_of_items, value))
    return True


@pytest.mark.parametrize("call_format", ELEMENTS, ids=lambda f: f.name)
@settings(max_examples=40)
@given(calls=st.lists(st.tuples(names, st.dictionaries(names, element_values, max_size=4)), min_size=1, max_size=3,
                      unique_by=lambda call: call[0]), cuts=st.lists(st.integers(0), max_size=20), data=st.data())
def test_element_arguments_are_recovered_by_their_schemas(call_format, calls, cuts, data):
    """MiniMax M3: parameters as tags of their names, nested values as nested tags, each read as its schema says."""
    calls = [(name, arguments) for name, arguments in calls if one_kind_of_items(arguments)]
    prefix = data.draw(plain_text_for(call_format))
    text = (prefix + " " if prefix else "") + call_format.render_calls(calls)
    types = {name: {key: schema_of(value) for key, value in arguments.items()} for name, arguments in calls}
    events, parsed = stream(text, cuts, call_format, types)
    assert [(c.name, json.loads(c.arguments), c.complete) for c in parsed] == [(n, a, True) for n, a in calls]
    assert content_of(events).strip() == prefix


def test_llama3_python_tag_opens_calls_and_never_reaches_content():
    content, calls = parse_tool_calls('<|python_tag|>{"name": "f", "parameters": {"x": 1}}', LLAMA3)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": 1})]


def test_bare_json_later_in_the_text_is_content():
    text = 'Here is JSON: {"name": "f", "arguments": {}}'
    assert parse_tool_calls(text, GENERIC) == (text, [])


def test_a_json_answer_that_is_not_a_call_stays_content():
    text = '{"name": "Ada", "age": 36}'
    assert parse_tool_calls(text, GENERIC) == (text, [])


def test_text_after_hermes_calls_is_content_again():
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>\nDone.', HERMES)
    assert content == "Done." and len(calls) == 1 and calls[0].complete


def test_truncated_call_is_incomplete():
    _, calls = parse_tool_calls('[TOOL_CALLS][{"name": "f", "arguments": {"x": [1, 2', MISTRAL)
    assert [(c.name, c.arguments, c.complete) for c in calls] == [("f", '{"x": [1, 2', False)]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("{% for t in tools %}<tool_call>{{ t | tojson }}</tool_call>{% endfor %}", HERMES),
        ("{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", MISTRAL),
        ('<|start_header_id|>{% if tools %}{"name": function name, "parameters": ...}{% endif %}', LLAMA3),
        ("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages[0]['content'] }}", GENERIC),
    ],
)
def test_format_is_detected_from_the_template(source, expected):
    assert detect_tool_call_format(source) is expected


def test_call_cut_off_before_its_name_is_dropped_not_content():
    assert parse_tool_calls('Sure. <tool_call>{"na', HERMES) == ("Sure. ", [])


@pytest.mark.parametrize("text", [
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>",  # GLM 4.6, Laguna
    "<tool_call>get_weather<arg_key>city</arg_key>\n<arg_value>Paris</arg_value></tool_call>",  # Ling 3
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>",  # GLM 4.7, Spark 2.5
])
@pytest.mark.parametrize("call_format", [GLM, GLM_47], ids=lambda f: f.name)
def test_glm_calls_are_read_whatever_whitespace_their_template_puts_between_tags(text, call_format):
    content, calls = parse_tool_calls("Checking.\n" + text, call_format)
    assert content.strip() == "Checking."
    assert [(c.name, json.loads(c.arguments), c.complete) for c in calls] == [("get_weather", {"city": "Paris"}, True)]


def test_a_minicpm_value_in_cdata_is_read_without_its_wrapper():
    text = '<function name="note"><param name="text"><![CDATA[a < b\nand c]]></param></function>'
    _, calls = parse_tool_calls(text, MINICPM, {"note": {"text": {"type": "string"}}})
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("note", {"text": "a < b\nand c"})]


def test_functionary_recipients_open_calls_or_text():
    """The prompt ends with `>>>`: the answer starts with its recipient, `all` for text, a tool's name for a call."""
    from chat.tool_formats import FUNCTIONARY_V32

    assert parse_tool_calls("all\nHello there.", FUNCTIONARY_V32) == ("Hello there.", [])
    content, calls = parse_tool_calls('get_weather\n{"city": "Paris"}>>>all\nChecking.', FUNCTIONARY_V32)
    assert content == "Checking." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    assert parse_tool_calls("Hello there, no header.", FUNCTIONARY_V32) == ("Hello there, no header.", [])


def test_a_gigachat3_call_message_follows_the_answer_and_its_separator_is_never_content():
    from chat.tool_formats import GIGACHAT_3

    text = 'Checking.<|message_sep|>\n\nfunction call<|role_sep|>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    content, calls = parse_tool_calls(text, GIGACHAT_3)
    assert content == "Checking." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    assert parse_tool_calls("Sunny.<|message_sep|>", GIGACHAT_3) == ("Sunny.", [])


def test_kimi_k3_values_are_read_by_the_type_the_call_names():
    """Without the tool's schema (a call in the history), each value is read as the type written before it."""
    from chat.tool_formats import KIMI_K3

    argument = '<|open|>argument key="{}" type="{}"<|sep|>{}<|close|>argument<|sep|>'
    text = ('<|open|>tools<|sep|><|open|>call tool="f" index="1"<|sep|>' + argument.format("city", "string", "3")
            + argument.format("days", "number", "3") + argument.format("tags", "array", '["a"]')
            + '<|close|>call<|sep|><|open|>call tool="g" index="2"<|sep|><|close|>call<|sep|><|close|>tools<|sep|>')
    content, calls = parse_tool_calls(text, KIMI_K3)
    assert content == "" and [(c.name, json.loads(c.arguments), c.complete) for c in calls] == [
        ("f", {"city": "3", "days": 3, "tags": ["a"]}, True), ("g", {}, True)]


@pytest.mark.parametrize("text, expected", [
    (" to=user<|message|>It is sunny.<|eot|>", "It is sunny."),
    ("<|message|>It is sunny.", "It is sunny."),  # (a small model's header without its recipient)
    ("Set x to=5, then to= y.", "Set x to=5, then to= y."),  # not headers: text
    ("Cut off to=us", "Cut off to=us"),
])
def test_muse_message_headers_are_never_content(text, expected):
    from chat.tool_formats import MUSE

    for cuts in ([], list(range(len(text)))):
        events, calls = stream(text, cuts, MUSE)
        assert content_of(events) == expected and calls == []


def test_muse_calls_follow_a_header_naming_the_tool():
    from chat.tool_formats import MUSE

    call = ('<atem:function_calls>\n<atem:invoke name="{}">\n<atem:parameter name="city">Paris</atem:parameter>\n'
            '</atem:invoke>\n</atem:function_calls>')
    text = (" to=user<|message|>Checking.<|eom|><|start|>assistant to=get_weather<|message|>" + call.format("get_weather")
            + "<|eom|><|start|>assistant to=get_time<|message|>" + call.format("get_time") + "<|eot|>")
    events, calls = stream(text, list(range(0, len(text), 3)), MUSE)
    assert content_of(events) == "Checking."
    assert [(c.name, json.loads(c.arguments), c.complete) for c in calls] == [
        ("get_weather", {"city": "Paris"}, True), ("get_time", {"city": "Paris"}, True)]


def test_pythonic_parameters_named_as_python_keywords_are_read():
    """`from=` or `if=` is no valid Python argument, yet tools name parameters so (a route's `from`)."""
    text = "<|tool_call_start|>[route(from='Paris', to='Rome', note='if=1 stays text')]<|tool_call_end|>"
    _, calls = parse_tool_calls(text, PYTHONIC)
    assert [(c.name, json.loads(c.arguments), c.complete) for c in calls] == [
        ("route", {"from": "Paris", "to": "Rome", "note": "if=1 stays text"}, True)]
