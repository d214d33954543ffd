"""A Messages request's structured outputs mapped onto the chat path: `output_config.format` (and the beta's
top-level `output_format`) becomes a strict json_schema response_format, a tool's `strict` its function's `strict`,
and what the grammar cannot enforce is refused naming the field as the Messages client sent it."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.anthropic.protocol import MessagesRequest
from api.anthropic.request import messages_param_names, to_chat_request
from api.pipeline.prepare import prepare_chat
from backends.base import GENERATIVE_CAPABILITIES
from chat.templates import ChatPromptRenderer, ChatTemplateInfo
from errors import InvalidRequest

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
RENDERER = ChatPromptRenderer(ChatTemplateInfo(
    source=(TEMPLATES / "chatml.jinja").read_text(), tool_prompt_source=(TEMPLATES / "tool_prompt.jinja").read_text(),
))
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}
FORMAT = {"type": "json_schema", "schema": SCHEMA}
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def body(**fields) -> MessagesRequest:
    return MessagesRequest(**{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}],
                              **fields})


def refusal(request: MessagesRequest) -> InvalidRequest:
    """The error a request gets on its way to the engine, as the Messages route names its fields."""
    with pytest.raises(InvalidRequest) as caught, messages_param_names():
        prepare_chat(to_chat_request(request), RENDERER, GENERATIVE_CAPABILITIES)
    return caught.value


def test_output_config_format_becomes_a_strict_json_schema_and_effort_still_applies():
    chat = to_chat_request(body(output_config={"format": FORMAT, "effort": "low"}))
    assert chat.response_format.type == "json_schema"
    assert chat.response_format.json_schema.schema_ == SCHEMA and chat.response_format.json_schema.strict is True
    assert chat.reasoning_effort == "low"
    gbnf = prepare_chat(chat, RENDERER, GENERATIVE_CAPABILITIES).requests[0].grammar.gbnf
    assert 'root ::= "{" space ok-kv "}" space' in gbnf.splitlines()


def test_the_beta_output_format_spelling_is_the_same_request():
    assert to_chat_request(body(output_format=FORMAT)).response_format == \
        to_chat_request(body(output_config={"format": FORMAT})).response_format


def test_no_format_leaves_the_answer_free():
    assert to_chat_request(body(output_config={"effort": "high", "format": None})).response_format is None


@pytest.mark.parametrize("fields,param", [
    ({"output_config": {"format": FORMAT}, "output_format": FORMAT}, "output_format"),
    ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
    ({"output_config": {"format": "json"}}, "output_config.format.type"),
    ({"output_format": {"type": "json_schema"}}, "output_format.schema"),
    ({"output_config": {"format": FORMAT}, "tools": [TOOL]}, "output_config.format"),
    ({"output_config": {"format": FORMAT}, "tools": [TOOL], "tool_choice": {"type": "any"}}, "output_config.format"),
])
def test_bad_or_conflicting_formats_are_refused_naming_the_field(fields, param):
    with pytest.raises(InvalidRequest) as caught:
        to_chat_request(body(**fields))
    assert caught.value.param == param


def test_a_format_with_tools_the_model_may_not_call_is_accepted():
    chat = to_chat_request(body(output_config={"format": FORMAT}, tools=[TOOL], tool_choice={"type": "none"}))
    prepared = prepare_chat(chat, RENDERER, GENERATIVE_CAPABILITIES)
    assert "ok-kv" in prepared.requests[0].grammar.gbnf and not prepared.tool_plan.active


def test_a_strict_tool_is_a_strict_function_and_others_stay_unstrict():
    chat = to_chat_request(body(tools=[{**TOOL, "strict": True}, {**TOOL, "name": "other"}]))
    assert [tool.function.strict for tool in chat.tools] == [True, None]


def test_an_unenforceable_output_schema_is_refused_naming_the_construct():
    schema = {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 5}}}
    error = refusal(body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert "'multipleOf'" in error.message and "$.properties.n" in error.message
    assert error.param == "output_config.format.schema"


def test_an_unenforceable_strict_tool_schema_is_refused_but_a_plain_tool_keeps_working():
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    tool = {"name": "tag", "input_schema": schema}
    forced = {"type": "tool", "name": "tag"}
    assert "'uniqueItems'" in refusal(body(tools=[{**tool, "strict": True}], tool_choice=forced)).message
    prepared = prepare_chat(to_chat_request(body(tools=[tool], tool_choice=forced)), RENDERER,
                            GENERATIVE_CAPABILITIES)
    assert "tag" in prepared.requests[0].grammar.gbnf
