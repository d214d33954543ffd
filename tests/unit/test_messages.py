import json

import pytest

from chat.messages import content_text, to_template_messages
from chat.tool_formats import MISTRAL
from errors import InvalidRequest


def _call(name: str, arguments: str, call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_content_text_passes_strings_and_maps_none_to_empty():
    assert content_text("hi", "p") == "hi"
    assert content_text(None, "p") == ""


def test_content_text_joins_text_parts_treating_missing_text_as_empty():
    parts = [{"type": "text", "text": "a"}, {"type": "text"}, {"type": "text", "text": "b"}]
    assert content_text(parts, "p") == "ab"


def test_content_text_refuses_non_text_part_naming_its_index():
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(InvalidRequest) as info:
        content_text(parts, "messages[3].content")
    assert info.value.param == "messages[3].content[1].type"
    assert "image_url" in info.value.message


def test_empty_messages_are_refused():
    with pytest.raises(InvalidRequest) as info:
        to_template_messages([])
    assert info.value.param == "messages"


def test_developer_becomes_system_and_parts_are_joined():
    rendered = to_template_messages(
        [{"role": "developer", "content": "rules"}, {"role": "user", "content": [{"type": "text", "text": "q"}]}]
    )
    assert rendered == [{"role": "system", "content": "rules"}, {"role": "user", "content": "q"}]


def test_unsupported_role_names_its_index():
    with pytest.raises(InvalidRequest) as info:
        to_template_messages([{"role": "user", "content": "x"}, {"role": "critic", "content": "y"}])
    assert info.value.param == "messages[1].role"


def test_non_text_part_param_names_the_message_index():
    with pytest.raises(InvalidRequest) as info:
        to_template_messages([{"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "audio"}]}])
    assert info.value.param == "messages[1].content[0].type"


def test_textual_tool_result_becomes_user_tool_response():
    rendered = to_template_messages([{"role": "tool", "content": "42", "tool_call_id": "c"}])
    assert rendered == [{"role": "user", "content": "<tool_response>\n42\n</tool_response>"}]


def test_textual_legacy_function_role_is_treated_as_tool():
    rendered = to_template_messages([{"role": "function", "name": "f", "content": "ok"}])
    assert rendered == [{"role": "user", "content": "<tool_response>\nok\n</tool_response>"}]


def test_textual_assistant_calls_are_written_in_hermes_format_after_text():
    message = {"role": "assistant", "content": "Let me check.", "tool_calls": [_call("get", '{"city": "Oslo"}')]}
    [rendered] = to_template_messages([message])
    assert rendered["role"] == "assistant"
    text, call = rendered["content"].split("\n", 1)
    assert text == "Let me check."
    assert call.startswith("<tool_call>") and call.endswith("</tool_call>")
    assert json.loads(call.removeprefix("<tool_call>").removesuffix("</tool_call>")) == {
        "name": "get", "arguments": {"city": "Oslo"}
    }


def test_textual_calls_without_text_use_given_format_and_empty_arguments():
    message = {"role": "assistant", "content": None, "tool_calls": [_call("ping", "")]}
    [rendered] = to_template_messages([message], call_format=MISTRAL)
    assert rendered["content"] == '[TOOL_CALLS][{"name": "ping", "arguments": {}}]'


def test_legacy_function_call_is_rendered_as_a_call():
    message = {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": '{"x": 1}'}}
    [rendered] = to_template_messages([message])
    assert rendered["content"] == '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'


def test_native_assistant_calls_keep_structure_with_parsed_arguments():
    message = {"role": "assistant", "content": None, "tool_calls": [_call("get", '{"a": [1]}', "c9")]}
    [rendered] = to_template_messages([message], native_tools=True)
    assert rendered == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "get", "arguments": {"a": [1]}}}],
    }


def test_native_tool_result_keeps_call_id_and_name():
    rendered = to_template_messages(
        [{"role": "tool", "content": "r", "tool_call_id": "c9"}, {"role": "function", "name": "f", "content": "s"}],
        native_tools=True,
    )
    assert rendered == [
        {"role": "tool", "content": "r", "tool_call_id": "c9"},
        {"role": "tool", "content": "s", "tool_call_id": "", "name": "f"},
    ]


@pytest.mark.parametrize("native", [False, True])
def test_invalid_json_arguments_in_history_are_refused(native):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [_call("f", "{not json")]}]
    with pytest.raises(InvalidRequest) as info:
        to_template_messages(messages, native_tools=native)
    assert info.value.param == "messages[1].tool_calls"
