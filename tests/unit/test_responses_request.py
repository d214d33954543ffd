"""Responses request -> chat request: every field mapped or refused by name."""

from __future__ import annotations

import pytest

from api.responses.protocol import ResponsesRequest
from api.responses.request import responses_param_names, to_chat_request
from errors import InvalidRequest


def convert(**fields):
    return to_chat_request(ResponsesRequest.model_validate(fields)).model_dump(exclude_none=True, by_alias=True)


def test_string_input_and_instructions_become_system_and_user_messages():
    chat = convert(input="Hi", instructions="Be brief.", max_output_tokens=5, temperature=0.2, top_k=3)
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat["max_completion_tokens"] == 5 and chat["temperature"] == 0.2 and chat["top_k"] == 3


def test_sampling_extensions_reach_the_chat_request():
    chat = convert(input="Hi", seed=7, logit_bias={"2": -100}, min_p=0.1)  # (logit_bias was dropped once)
    assert chat["seed"] == 7 and chat["logit_bias"] == {"2": -100} and chat["min_p"] == 0.1


def test_function_call_items_join_the_assistant_turn_and_outputs_become_tool_messages():
    chat = convert(input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
    ])
    assistant = chat["messages"][1]
    assert assistant["content"] == "Checking." and [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert chat["messages"][2:] == [{"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                                    {"role": "tool", "content": "rain", "tool_call_id": "c2"}]


def test_tools_choice_and_text_format_map_to_their_chat_twins():
    chat = convert(input="x", tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                   tool_choice={"type": "function", "name": "f"}, parallel_tool_calls=False,
                   text={"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}}})
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_logprobs_come_from_include():
    chat = convert(input="x", include=["message.output_text.logprobs"], top_logprobs=3)
    assert chat["logprobs"] is True and chat["top_logprobs"] == 3
    assert "logprobs" not in convert(input="x", top_logprobs=3)


@pytest.mark.parametrize("fields, param", [
    ({"input": "x", "conversation": "c", "previous_response_id": "resp_1"}, "conversation"),  # one or the other
    ({"input": "x", "conversation": {"name": "c"}}, "conversation"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
])
def test_refusals_name_the_field(fields, param):
    with pytest.raises(InvalidRequest) as refused:
        convert(**fields)
    assert refused.value.param == param


@pytest.mark.parametrize("chat_param, responses_param", [
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format", "text.format"),
    ("tools[2].function.parameters", "tools[2].parameters"),
    ("max_completion_tokens", "max_output_tokens"),
    ("messages[3].content", "input"),
    ("temperature", "temperature"),
])
def test_errors_from_the_chat_path_name_the_responses_field(chat_param, responses_param):
    with pytest.raises(InvalidRequest) as refused, responses_param_names():
        raise InvalidRequest("no", param=chat_param)
    assert refused.value.param == responses_param
