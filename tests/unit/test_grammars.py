import json
import re

import pytest

from chat.grammars import MAX_PARALLEL_CALLS, json_schema_grammar, tool_call_grammar, tool_call_schema
from chat.tool_call_parser import parse_tool_calls
from chat.tool_formats import FORMATS, HERMES, LLAMA3, MISTRAL
from chat.tools import build_tool_plan
from errors import InvalidRequest

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def rules(gbnf: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in gbnf.splitlines())


def test_simple_object_schema_gives_a_root_rule_with_its_required_key():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    grammar = rules(json_schema_grammar(schema).gbnf)
    assert grammar["root"] == '"{" space a-kv "}" space'
    assert grammar["a-kv"].startswith('"\\"a\\"" space ":" space string')


def test_whitespace_between_tokens_is_at_most_one_space():
    assert rules(json_schema_grammar({"type": "object"}).gbnf)["space"] == '" "?'


def test_string_characters_exclude_raw_control_characters():
    gbnf = json_schema_grammar({"type": "string"}).gbnf
    assert "\\x00-\\x1F" in rules(gbnf)["char"]


def test_objects_with_properties_are_closed_unless_they_say_otherwise():
    closed = json_schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}}).gbnf
    assert "additional" not in closed
    assert rules(closed)["root"] == '"{" space  (a-kv )? "}" space'  # optional: not required
    open_ = json_schema_grammar({"type": "object", "additionalProperties": {"type": "integer"}}).gbnf
    assert "additional-kvs" in rules(open_)["root"]


@pytest.mark.parametrize("keyword,schema", [
    ("not", {"type": "string", "not": {"const": "x"}}),
    ("patternProperties", {"type": "object", "patternProperties": {"^x": {"type": "string"}}}),
    ("uniqueItems", {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
    ("multipleOf", {"type": "integer", "multipleOf": 2}),
    ("if", {"type": "string", "if": {"minLength": 1}, "then": {"maxLength": 2}}),
    ("format 'email'", {"type": "string", "format": "email"}),  # (the converter knows date, time, uuid only)
])
def test_unsupported_keywords_of_a_strict_schema_are_refused_by_name(keyword, schema):
    with pytest.raises(InvalidRequest) as caught:
        json_schema_grammar(schema, "response_format.json_schema.schema", strict=True)
    assert caught.value.message.startswith(f"JSON schema feature '{keyword}' (at $)")
    assert caught.value.param == "response_format.json_schema.schema"


def test_a_nested_unsupported_keyword_of_a_strict_schema_is_reported_with_its_path():
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(InvalidRequest, match=r"'uniqueItems' \(at \$\.properties\.tags\)"):
        json_schema_grammar(schema, strict=True)


def test_a_non_strict_schema_keeps_what_can_be_enforced_and_logs_the_rest(caplog):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                        "uniqueItems": True},
                                               "limit": {"type": "number", "exclusiveMinimum": 0}},
              "required": ["tags"]}
    grammar = json_schema_grammar(schema)
    assert "tags-kv" in rules(grammar.gbnf)["root"]
    assert "uniqueItems at $.properties.tags" in caplog.text and "exclusiveMinimum at $.properties.limit" in caplog.text


def test_the_formats_the_converter_knows_are_enforced():
    for known in ("date", "date-time", "time", "uuid", "uuid4"):
        gbnf = json_schema_grammar({"type": "string", "format": known}, strict=True).gbnf
        assert "[0-9]" in gbnf or "[0-9a-fA-F]" in gbnf, known


def test_exclusive_integer_bounds_become_inclusive_ones():
    gbnf = json_schema_grammar({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4}, strict=True).gbnf
    assert rules(gbnf)["root"] == '"1" | "2" | "3"'


def test_keywords_inside_enum_and_const_values_are_data_not_schema():
    gbnf = json_schema_grammar({"enum": [{"not": 1}]}).gbnf
    assert rules(gbnf)["root"] == '"{\\"not\\": 1}"'


def test_local_defs_ref_becomes_a_rule():
    schema = {
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        "type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}}, "required": ["p"],
    }
    grammar = rules(json_schema_grammar(schema).gbnf)
    assert grammar["p"] == "schema-Point"  # definitions are namespaced (see chat/schema_refs.py)
    assert "schema-Point-x-kv" in grammar["schema-Point"]


def test_a_ref_to_a_missing_definition_is_an_invalid_request():
    schema = {"type": "object", "properties": {"p": {"$ref": "#/$defs/Missing"}}}
    with pytest.raises(InvalidRequest, match="cannot be turned into a grammar") as caught:
        json_schema_grammar(schema, "tools")
    assert caught.value.param == "tools"


def test_remote_refs_are_refused():
    with pytest.raises(InvalidRequest, match="Remote schema references"):
        json_schema_grammar({"$ref": "https://example.com/schema.json"})


def test_a_small_integer_range_becomes_an_enumeration():
    gbnf = json_schema_grammar({"type": "integer", "minimum": 1, "maximum": 3}).gbnf
    assert rules(gbnf)["root"] == '"1" | "2" | "3"'


@pytest.mark.parametrize("schema", [
    {"type": "number", "minimum": 0, "maximum": 1},
    {"type": "integer", "minimum": 0},
    {"type": "integer", "minimum": 0, "maximum": 5000},
])
def test_other_numeric_bounds_of_a_strict_schema_are_refused(schema):
    with pytest.raises(InvalidRequest, match="only integers with both bounds"):
        json_schema_grammar(schema, strict=True)


def test_tool_call_schema_is_one_object_per_tool():
    single = tool_call_schema(build_tool_plan([WEATHER], "required", None))
    assert single["properties"]["name"] == {"const": "get_weather"}
    assert single["required"] == ["name", "arguments"]
    both = tool_call_schema(build_tool_plan([WEATHER, TIME], "required", None), "parameters")
    assert [o["properties"]["name"]["const"] for o in both["anyOf"]] == ["get_weather", "get_time"]
    assert "parameters" in both["anyOf"][0]["properties"]


def test_named_tool_grammar_allows_exactly_one_call_of_that_tool():
    plan = build_tool_plan([WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}}, None)
    spec = tool_call_grammar(plan, HERMES, lazy=False)
    grammar = rules(spec.gbnf)
    assert grammar["call"] == '"<tool_call>" call-json "</tool_call>"'
    assert grammar["call-json-name"] == '"\\"get_weather\\""'
    assert "get_time" not in spec.gbnf
    assert "{0," not in grammar["root"]  # a named choice is never parallel
    assert spec.lazy_triggers == ()


def test_required_parallel_grammar_repeats_calls_in_the_models_format():
    spec = tool_call_grammar(build_tool_plan([WEATHER, TIME], "required", True), MISTRAL, lazy=False)
    grammar = rules(spec.gbnf)
    assert grammar["root"] == f'"[TOOL_CALLS][" call (", " call){{0,{MAX_PARALLEL_CALLS - 1}}} "]"'
    assert '"\\"get_weather\\""' in spec.gbnf and '"\\"get_time\\""' in spec.gbnf


def test_auto_grammar_is_lazy_with_the_formats_triggers():
    spec = tool_call_grammar(build_tool_plan([WEATHER], "auto", False), LLAMA3, lazy=True)
    assert spec.lazy_triggers == LLAMA3.lazy_triggers()
    assert rules(spec.gbnf)["root"].startswith('"<|python_tag|>"? ')
    assert "call-json-parameters-kv" in rules(spec.gbnf)


@pytest.mark.parametrize("name", ["not", "minimum", "properties", "if", "multipleOf"])
def test_a_property_named_like_a_keyword_is_data_not_a_keyword(name):
    schema = {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}
    grammar = json_schema_grammar(schema, "response_format")
    assert f'\\"{name}\\"' in grammar.gbnf


def _undefined_rules(gbnf: str) -> set[str]:
    """Rule names used but never defined (llama.cpp would refuse such a grammar)."""
    import re

    defined = set(re.findall(r"(?m)^([\w-]+) ::=", gbnf))
    bodies = " ".join(line.split("::=", 1)[1] for line in gbnf.splitlines() if "::=" in line)
    bodies = re.sub(r'"(?:[^"\\]|\\.)*"', " ", bodies)  # string literals
    bodies = re.sub(r"\[(?:[^\]\\]|\\.)*\]", " ", bodies)  # character classes
    return set(re.findall(r"[A-Za-z][\w-]*", bodies)) - defined


def _pydantic_schemas():
    from pydantic import BaseModel

    class Options(BaseModel):
        unit: str
        days: int

    class Weather(BaseModel):
        city: str
        options: Options
        fallback: Options | None = None

    class Tree_Node(BaseModel):  # recursive, and a name the converter would rewrite
        name: str
        children: list["Tree_Node"] = []

    return {"nested": Weather.model_json_schema(), "recursive": Tree_Node.model_json_schema()}


@pytest.mark.parametrize("kind", ["nested", "recursive"])
def test_pydantic_defs_schemas_become_complete_grammars_as_response_format_and_tool(kind):
    schema = _pydantic_schemas()[kind]
    assert "$defs" in schema
    assert _undefined_rules(json_schema_grammar(schema).gbnf) == set()
    for choice in ("required", {"type": "function", "function": {"name": "my_tool"}}):
        plan = build_tool_plan([{"type": "function", "function": {"name": "my_tool", "parameters": schema}},
                                {"type": "function", "function": {"name": "other", "parameters": schema}}],
                               choice, None)
        assert _undefined_rules(tool_call_grammar(plan, HERMES, lazy=False).gbnf) == set()


@pytest.mark.parametrize("meta", [[], {}, 3])
def test_a_tool_whose_schema_names_a_non_string_meta_schema_is_a_400(meta):
    # found by the API fuzzer: jsonschema looks `$schema` up in a dict, and a list crashed the request (500)
    with pytest.raises(InvalidRequest) as refused:
        build_tool_plan([{"type": "function", "function": {"name": "f", "parameters": {"$schema": meta}}}], "auto", None)
    assert "$schema" in refused.value.message


@pytest.mark.parametrize("call_format", FORMATS, ids=lambda f: f.name)
def test_the_smallest_call_a_formats_grammar_allows_is_read_back_as_that_call(call_format):
    """Grammar and parser agree on every format, names outside the JSON included (mistral-v7, deepseek...)."""
    plan = build_tool_plan([WEATHER, TIME], "required", False)
    spec = tool_call_grammar(plan, call_format, lazy=False)
    assert _undefined_rules(spec.gbnf) == set()
    content, calls = parse_tool_calls(spec.shortest, call_format)
    assert content.strip() == "" and len(calls) == 1 and calls[0].complete
    assert calls[0].name in ("get_weather", "get_time") and isinstance(json.loads(calls[0].arguments), dict)


def test_xml_parameters_grammar_takes_any_text_values_and_typed_others():
    """Qwen3-Coder style: a string value is any text but its closing tag; an integer is an integer; required
    parameters are there, optional ones may be."""
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import QWEN_XML

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}}
    gbnf = tool_call_grammar(build_tool_plan([tool], "required", False), QWEN_XML, lazy=False).gbnf

    def call(*parameters: str) -> str:
        return "<tool_call>\n<function=get_weather>" + "".join(parameters) + "\n</function>\n</tool_call>"

    assert accepts(gbnf, call("\n<parameter=city>\nParis <b>x</b>\n</parameter>", "\n<parameter=days>\n3\n</parameter>"))
    assert not accepts(gbnf, call("\n<parameter=city>\nPa\n</parameter>ris\n</parameter>"))  # the tag inside a value
    assert not accepts(gbnf, call("\n<parameter=city>\nPa</parameter>ris\n</parameter>"))  # (no line break before it)
    assert accepts(gbnf, call("\n<parameter=city>\nParis</parameter>"))  # the parser reads this value as "Paris"
    assert not accepts(gbnf, call("\n<parameter=days>\n3\n</parameter>"))  # city is required
    assert not accepts(gbnf, call("\n<parameter=city>\nParis\n</parameter>", "\n<parameter=days>\nthree\n</parameter>"))


@pytest.mark.parametrize(("answer", "remaining"), [
    ("<tool_call>\n<function=f>\n<parameter=city>\nParis is a", "\n</parameter>\n</function>\n</tool_call>"),
    ("<tool_call>\n<function=f>\n<parameter=city>\nParis\n</", "parameter>\n</function>\n</tool_call>"),
    ("<tool_call>\n<function=f>\n<parameter=city>\nParis </function> x", "\n</parameter>\n</function>\n</tool_call>"),
    ("<tool_call>\n<function=f>\n<parameter=city>\nParis\n</parameter>", "\n</function>\n</tool_call>"),
    ("<tool_call>\n<function=f>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>", ""),
])
def test_the_text_that_closes_an_xml_call_is_read_from_where_the_answer_stands(answer, remaining):
    from chat.tool_formats import QWEN_XML

    plan = build_tool_plan([WEATHER], "required", False)
    assert tool_call_grammar(plan, QWEN_XML, lazy=False).tag_closing.remaining(answer) == remaining


def test_glm_calls_close_their_value_then_the_call():
    from chat.tool_formats import GLM_47

    closing = tool_call_grammar(build_tool_plan([WEATHER], "required", False), GLM_47, lazy=False).tag_closing
    assert closing.remaining("<tool_call>get_weather<arg_key>city</arg_key><arg_value>Par") == "</arg_value></tool_call>"
    assert closing.remaining("<tool_call>get_weather<arg_key>city</arg_key><arg_value>P</arg_value>") == "</tool_call>"


def test_dsml_says_which_values_are_text():
    """DeepSeek V3.2 writes `string="true"` before a text value and `string="false"` before any other."""
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import DSML_V32

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city", "days"]}}}
    gbnf = tool_call_grammar(build_tool_plan([tool], "required", False), DSML_V32, lazy=False).gbnf
    head, tail = '<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">', "\n</｜DSML｜invoke>\n</｜DSML｜function_calls>"
    city = '\n<｜DSML｜parameter name="city" string="{}">Paris</｜DSML｜parameter>'
    days = '\n<｜DSML｜parameter name="days" string="{}">3</｜DSML｜parameter>'
    assert accepts(gbnf, head + city.format("true") + days.format("false") + tail)
    assert not accepts(gbnf, head + city.format("false") + days.format("false") + tail)
    assert not accepts(gbnf, head + city.format("true") + days.format("true") + tail)


def test_gemma4_calls_have_sorted_bare_keys_and_marked_text():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import GEMMA4

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "days": {"type": "integer"}, "city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["city"]}}}
    gbnf = tool_call_grammar(build_tool_plan([tool], "required", False), GEMMA4, lazy=False).gbnf

    def call(body: str) -> str:
        return "<|tool_call>call:f{" + body + "}<tool_call|>"

    assert accepts(gbnf, call('city:<|"|>Paris, "the" {city}<|"|>,days:3'))
    assert accepts(gbnf, call('city:<|"|>Paris<|"|>,tags:[<|"|>a<|"|>,<|"|>b<|"|>]'))
    assert not accepts(gbnf, call('days:3,city:<|"|>Paris<|"|>'))  # keys in sorted order, as the template writes them
    assert not accepts(gbnf, call('days:3'))  # city is required
    assert not accepts(gbnf, call('city:"Paris"'))  # text is marked, not quoted


def test_the_text_that_closes_a_gemma4_call_is_read_from_where_the_answer_stands():
    from chat.tool_formats import GEMMA4

    closing = tool_call_grammar(build_tool_plan([WEATHER], "required", False), GEMMA4, lazy=False).tag_closing
    assert closing.remaining('<|tool_call>call:get_weather{city:<|"|>Par') == '<|"|>}<tool_call|>'
    assert closing.remaining('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,tags:[1') == "]}<tool_call|>"
    assert closing.remaining('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_') == "call|>"
    assert closing.remaining('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>') == ""


def test_pythonic_calls_take_keyword_literals_and_close_where_they_stand():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import PYTHONIC

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}}, "required": ["city"]}}}
    spec = tool_call_grammar(build_tool_plan([tool], "required", False), PYTHONIC, lazy=False)
    assert accepts(spec.gbnf, "<|tool_call_start|>[f(city='Paris', days=3, metric=True)]<|tool_call_end|>")
    assert accepts(spec.gbnf, "<|tool_call_start|>[f(city=\"l'Isle\")]<|tool_call_end|>")
    assert not accepts(spec.gbnf, "<|tool_call_start|>[f(days=3)]<|tool_call_end|>")  # city is required
    assert not accepts(spec.gbnf, "<|tool_call_start|>[f(city='Paris', metric=true)]<|tool_call_end|>")
    closing = spec.tag_closing
    assert closing.remaining("<|tool_call_start|>[f(city='Par") == "')]<|tool_call_end|>"
    assert closing.remaining("<|tool_call_start|>[f(city='Paris', days=3") == ")]<|tool_call_end|>"
    assert closing.remaining("<|tool_call_start|>[f(city='Paris')]<|tool_call_end|>") == ""


def test_functionary_calls_start_at_the_recipient_the_prompt_opened():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import FUNCTIONARY_V32

    plan = build_tool_plan([WEATHER, TIME], "required", True)
    gbnf = tool_call_grammar(plan, FUNCTIONARY_V32, lazy=False).gbnf
    assert accepts(gbnf, 'get_weather\n{"city": "Paris"}')
    assert accepts(gbnf, 'get_weather\n{"city": "Paris"}>>>get_time\n{}')
    assert not accepts(gbnf, '>>>get_weather\n{"city": "Paris"}')  # (the prompt wrote that `>>>`)
    # Under `auto` the first recipient starts the grammar only when it is a tool: any other word would be text the
    # grammar cannot take, and llama.cpp aborts the process on that (seen: "Hello\n" as a recipient).
    lazy = tool_call_grammar(plan, FUNCTIONARY_V32, lazy=True)
    assert any(re.fullmatch(trigger, 'get_weather\n{"ci') for trigger in lazy.lazy_triggers)
    assert any(re.fullmatch(trigger, 'all\nLet me check.>>>get_weather\n{') for trigger in lazy.lazy_triggers)
    assert not any(re.fullmatch(trigger, text) for trigger in lazy.lazy_triggers
                   for text in ("all\nHi", "Hello\nx", "all\nHi.>>>all\nDone"))


def test_hy3_calls_write_text_raw_and_other_values_as_json():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import HY3

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}
    spec = tool_call_grammar(build_tool_plan([tool], "required", False), HY3, lazy=False)
    head, tail = "<tool_calls:opensource>\n<tool_call:opensource>f<tool_sep:opensource>", \
        "\n</tool_call:opensource>\n</tool_calls:opensource>"
    city = "\n<arg_key:opensource>city</arg_key:opensource>\n<arg_value:opensource>{}</arg_value:opensource>"
    days = "\n<arg_key:opensource>days</arg_key:opensource>\n<arg_value:opensource>{}</arg_value:opensource>"
    assert accepts(spec.gbnf, head + city.format("Paris, France") + days.format("3") + tail)
    assert not accepts(spec.gbnf, head + city.format("Paris") + days.format('"3"') + tail)
    assert spec.tag_closing.remaining(head + city.format("Par")[:-len("</arg_value:opensource>")]) == \
        "</arg_value:opensource>" + tail


def test_gigachat3_calls_are_messages_of_their_own():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import GIGACHAT_3

    gbnf = tool_call_grammar(build_tool_plan([WEATHER, TIME], "required", True), GIGACHAT_3, lazy=False).gbnf
    call = '<|message_sep|>\n\nfunction call<|role_sep|>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert accepts(gbnf, call)
    assert accepts(gbnf, call + '<|message_sep|>\n\nfunction call<|role_sep|>\n{"name": "get_time", "arguments": {}}')


def test_kimi_k3_calls_name_each_values_type_and_count_from_one():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import KIMI_K3

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "at": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
        "required": ["city", "days"]}}}
    spec = tool_call_grammar(build_tool_plan([tool], "required", False), KIMI_K3, lazy=False)
    head, tail = '<|open|>tools<|sep|><|open|>call tool="f" index="1"<|sep|>', "<|close|>call<|sep|><|close|>tools<|sep|>"
    city = '<|open|>argument key="city" type="{}"<|sep|>Paris, "FR"<|close|>argument<|sep|>'
    days = '<|open|>argument key="days" type="{}"<|sep|>3<|close|>argument<|sep|>'
    at = '<|open|>argument key="at" type="{}"<|sep|>null<|close|>argument<|sep|>'
    assert accepts(spec.gbnf, head + city.format("string") + days.format("number") + at.format("null") + tail)
    assert not accepts(spec.gbnf, head + city.format("string") + days.format("string") + tail)
    assert not accepts(spec.gbnf, head + city.format("string") + days.format("number") + at.format("string") + tail)
    assert spec.tag_closing.remaining(head + city.format("string")[:-30]) == "<|close|>argument<|sep|>" + tail


def test_muse_calls_may_open_with_the_header_naming_their_tool():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_formats import MUSE

    gbnf = tool_call_grammar(build_tool_plan([WEATHER, TIME], "required", False), MUSE, lazy=False).gbnf
    call = ('<atem:function_calls>\n<atem:invoke name="get_weather">\n<atem:parameter name="city">Paris'
            '</atem:parameter>\n</atem:invoke>\n</atem:function_calls>')
    assert accepts(gbnf, call) and accepts(gbnf, " to=get_weather<|message|>" + call)
    assert not accepts(gbnf, " to=user<|message|>" + call)  # (a header naming no tool opens text, not a call)


def test_minimax_m3_parameters_are_tags_of_their_names_and_nested_values_nested_tags():
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from chat.tool_call_parser import parse_tool_calls
    from chat.tool_formats import MINIMAX_M3
    from chat.xml_arguments import parameter_types

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"},
        "stops": {"type": "array", "items": {"type": "object", "properties": {"at": {"type": "string"}, "n": {
            "type": "number"}}, "required": ["at"]}}}, "required": ["city"]}}}
    plan = build_tool_plan([tool], "required", False)
    spec = tool_call_grammar(plan, MINIMAX_M3, lazy=False)
    m = "]<]minimax[>["
    head, tail = f'{m}<tool_call>\n{m}<invoke name="f">', f"{m}</invoke>\n{m}</tool_call>"
    stops = f"{m}<stops>{m}<item>{m}<at>3{m}</at>{m}<n>1.5{m}</n>{m}</item>{m}<item>{m}<at>Lyon{m}</at>{m}</item>{m}</stops>"
    call = head + f"{m}<city>Paris <b>{m}</city>{m}<days>3{m}</days>" + stops + tail
    assert accepts(spec.gbnf, call)
    assert not accepts(spec.gbnf, head + f"{m}<days>3{m}</days>" + tail)  # city is required
    assert not accepts(spec.gbnf, head + f"{m}<city>Paris{m}</city>{m}<days>three{m}</days>" + tail)
    _, calls = parse_tool_calls(call, MINIMAX_M3, parameter_types(plan.tools))
    assert json.loads(calls[0].arguments) == {"city": "Paris <b>", "days": 3,
                                              "stops": [{"at": "3", "n": 1.5}, {"at": "Lyon"}]}
    closing = spec.tag_closing
    assert closing.remaining(head + f"{m}<city>Paris{m}</city>{m}<stops>{m}<item>{m}<at>Ly") == \
        f"{m}</at>{m}</item>{m}</stops>" + tail
    assert closing.remaining(head + f"{m}<city>Par") == f"{m}</city>" + tail
    assert closing.remaining(call) == ""
