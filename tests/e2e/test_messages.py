"""Anthropic's Messages API through the real `anthropic` SDK against the real server and the instruct model:
create, stream, tool round trips, tool_choice any / tool, structured outputs (`output_config.format`, strict tools,
the SDK's `messages.parse`), count_tokens, errors as the SDK's exception classes, model listing, and a replay of a Claude-Code-shaped request (raw HTTP: `?beta=true`, `x-api-key`, system blocks
with cache_control, a system entry inside messages, 20+ tools, streaming)."""

from __future__ import annotations

import json
from enum import Enum

import anthropic
import httpx
import jsonschema
import pydantic
import pytest

from backends.embedded_model import SMOLLM2_FILE
from tests.server_process import running_server

MODEL = SMOLLM2_FILE
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                   "unit": {"enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"]}
WEATHER = {"name": "get_weather", "description": "Current weather in a city.", "input_schema": WEATHER_SCHEMA}
TIME = {"name": "get_time", "description": "Current time in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                         "required": ["city"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0}  # this SDK version no longer takes `temperature` as an argument; the API still does
CITY_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "country", "century", "capital"],
               "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string", "maxLength": 24},
                              "century": {"type": "integer", "minimum": 1, "maximum": 21},
                              "capital": {"type": "boolean"}}}
DESCRIBE = [{"role": "user", "content": "Describe Paris: its city name, country, founding century and whether it is "
                                        "a capital."}]
FORECAST = {"name": "get_forecast", "description": "Weather forecast for a city.", "strict": True, "input_schema": {
    "type": "object", "additionalProperties": False, "required": ["city", "days", "unit"],
    "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
                   "unit": {"enum": ["celsius", "fahrenheit"]}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    flags = ("--n-ctx", "8192", "--parallel", "2", "--log-level", "info")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("messages")) as process:
        yield process


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_create_answers_with_a_text_block_and_usage(client):
    message = client.messages.create(model=MODEL, max_tokens=40, system="Answer in one sentence.",
                                     messages=[{"role": "user", "content": "What is a lighthouse?"}])
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL and text_of(message).strip()
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens <= 40
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > 10


def test_stream_equals_the_whole_message(client):
    kwargs = dict(model=MODEL, max_tokens=48, extra_body=GREEDY, messages=[{"role": "user", "content": "Name a color."}])
    client.messages.create(**kwargs)  # warm the prefix: both runs below in the same rounding regime
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == text_of(whole) == text_of(final)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_a_stop_sequence_is_reported(client):
    kwargs = dict(model=MODEL, max_tokens=60, extra_body=GREEDY, messages=[{"role": "user", "content": "Count to ten."}])
    text = text_of(client.messages.create(**kwargs))
    stop = next(word for word in text.split() if len(word) > 2)
    message = client.messages.create(**kwargs, stop_sequences=[stop])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert stop not in text_of(message)


def test_tool_use_round_trip(client):
    first = client.messages.create(model=MODEL, max_tokens=120, messages=ASK, tools=[WEATHER, TIME],
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True})
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.id.startswith("toolu_") and first.stop_reason == "tool_use"
    assert call.name in ("get_weather", "get_time")
    history = [*ASK, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": [{"type": "text", "text": "Sunny, 21 degrees."}]}]}]
    answer = client.messages.create(model=MODEL, max_tokens=60, messages=history, tools=[WEATHER, TIME])
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens > first.usage.input_tokens
    assert text_of(answer).strip() or any(block.type == "tool_use" for block in answer.content)


def test_a_named_tool_is_called_with_valid_input_streamed_and_whole(client):
    kwargs = dict(model=MODEL, max_tokens=120, extra_body=GREEDY, messages=ASK, tools=[TIME, WEATHER],
                  tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    client.messages.create(**kwargs)
    whole = client.messages.create(**kwargs)
    [call] = whole.content
    assert call.type == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER_SCHEMA)
    with client.messages.stream(**kwargs) as stream:
        fragments = [event.delta.partial_json for event in stream
                     if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
        final = stream.get_final_message()
    assert json.loads("".join(fragments)) == call.input == final.content[0].input


def test_a_final_assistant_message_is_a_prefill_the_answer_continues(client):
    """Anthropic's semantics for a last assistant message: the answer starts with it, and the response holds only
    what follows."""
    question = {"role": "user", "content": "Count from one to ten in digits, separated by commas."}
    message = client.messages.create(model=SMOLLM2_FILE, max_tokens=12, extra_body=GREEDY,
                                     messages=[question, {"role": "assistant", "content": "1, 2, 3,"}])
    text = message.content[0].text
    assert text.lstrip().startswith("4"), text


def test_output_config_format_answers_json_valid_against_the_schema_streamed_and_whole(client, server):
    kwargs = dict(model=MODEL, max_tokens=120, extra_body=GREEDY, messages=DESCRIBE,
                  output_config={"format": {"type": "json_schema", "schema": CITY_SCHEMA}})
    whole = client.messages.create(**kwargs)
    [block] = whole.content
    assert block.type == "text" and whole.stop_reason == "end_turn"
    jsonschema.validate(json.loads(block.text), CITY_SCHEMA)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    jsonschema.validate(json.loads(text), CITY_SCHEMA)
    assert final.stop_reason == "end_turn" and [b.type for b in final.content] == ["text"]
    # The structured-outputs beta's spelling: a top-level `output_format`.
    beta = {"model": MODEL, "max_tokens": 120, "temperature": 0, "messages": DESCRIBE,
            "output_format": {"type": "json_schema", "schema": CITY_SCHEMA}}
    answer = httpx.post(f"{server.base_url}/v1/messages", json=beta, timeout=120).json()
    jsonschema.validate(json.loads(answer["content"][0]["text"]), CITY_SCHEMA)


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class City(pydantic.BaseModel):
    name: str
    capital: bool
    unit: Unit  # an enum: the SDK sends it as a `$ref` into `$defs`


def test_the_sdks_parse_helper_returns_the_pydantic_model(client):
    kwargs = dict(model=MODEL, max_tokens=120, extra_body=GREEDY, output_format=City, messages=[
        {"role": "user", "content": "Paris: its name, whether it is a capital, and the temperature unit used there."}])
    parsed = client.messages.parse(**kwargs)
    assert isinstance(parsed.parsed_output, City) and parsed.stop_reason == "end_turn"
    with client.messages.stream(**kwargs) as stream:
        assert isinstance(stream.get_final_message().parsed_output, City)


def test_a_strict_tool_is_called_with_input_valid_against_its_schema(client):
    kwargs = dict(model=MODEL, max_tokens=120, extra_body=GREEDY, messages=ASK, tools=[FORECAST, WEATHER],
                  tool_choice={"type": "tool", "name": "get_forecast"})
    whole = client.messages.create(**kwargs)
    [call] = whole.content
    assert call.type == "tool_use" and call.name == "get_forecast" and whole.stop_reason == "tool_use"
    jsonschema.validate(call.input, FORECAST["input_schema"])
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    jsonschema.validate(final.content[0].input, FORECAST["input_schema"])


def test_an_unenforceable_strict_schema_is_a_400_in_anthropics_shape(client, server):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    format_ = {"type": "json_schema", "schema": schema}
    with pytest.raises(anthropic.BadRequestError) as whole:
        client.messages.create(model=MODEL, max_tokens=5, messages=ASK, output_config={"format": format_})
    with pytest.raises(anthropic.BadRequestError) as streamed, \
            client.messages.stream(model=MODEL, max_tokens=5, messages=ASK, output_config={"format": format_}):
        pass
    tool = {"name": "tag", "strict": True, "input_schema": schema}
    with pytest.raises(anthropic.BadRequestError) as strict_tool:
        client.messages.create(model=MODEL, max_tokens=5, messages=ASK, tools=[tool],
                               tool_choice={"type": "tool", "name": "tag"})
    for error in (whole, streamed, strict_tool):
        assert error.value.body["type"] == "error" and error.value.body["error"]["type"] == "invalid_request_error"
        assert "'uniqueItems'" in error.value.body["error"]["message"]
    # The same schema on a tool that is not strict is a description: the call goes ahead.
    plain = client.messages.create(model=MODEL, max_tokens=5, messages=ASK, tools=[{**tool, "strict": False}])
    assert plain.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_count_tokens_equals_the_prompt_of_the_same_request(client):
    fields = dict(model=MODEL, system=[{"type": "text", "text": "You are terse."}], messages=ASK, tools=[WEATHER])
    counted = client.messages.count_tokens(**fields).input_tokens
    message = client.messages.create(max_tokens=1, **fields)
    assert counted == message.usage.input_tokens + message.usage.cache_read_input_tokens


def test_errors_are_the_sdks_exception_classes(client, server):
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as image:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    assert "image" in image.value.body["error"]["message"]
    response = httpx.post(f"{server.base_url}/v1/messages", json={"model": MODEL, "messages": ASK})  # no max_tokens
    assert response.status_code == 400 and response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in response.json()["error"]["message"]


def test_models_list_works_for_both_sdks(client, server):
    import openai

    anthropic_ids = [model.id for model in client.models.list()]
    assert MODEL in anthropic_ids and client.models.retrieve(MODEL).display_name == MODEL
    assert [m.id for m in server.openai_client().models.list()] == anthropic_ids  # strict OpenAI validation passes
    assert isinstance(server.openai_client(), openai.OpenAI)


def claude_code_body(tools: int) -> dict:
    hook = "<system-reminder>The user's project uses tabs for indentation. Keep answers short.</system-reminder>"
    return {
        "model": MODEL, "max_tokens": 64, "stream": True, "temperature": 0,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328;"},
                   {"type": "text", "text": "You are a coding assistant.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say pong.",
                                                   "cache_control": {"type": "ephemeral"}}]},
                     {"role": "system", "content": hook}],
        "tools": [{"name": f"tool_{i}", "description": f"Tool number {i}.", "input_schema": {
            "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}} for i in range(tools)],
        "thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        "metadata": {"user_id": json.dumps({"device_id": "test"})},
    }


def test_a_claude_code_shaped_request_streams(server):
    body = claude_code_body(tools=22)
    headers = {"x-api-key": "unused", "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    with httpx.stream("POST", f"{server.base_url}/v1/messages?beta=true", json=body, headers=headers,
                      timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    # The system entry inside messages reached the prompt: without it the prompt is shorter.
    usage = events[-2]["usage"]
    without = {**body, "messages": body["messages"][:1], "stream": False}
    plain = httpx.post(f"{server.base_url}/v1/messages", json=without, headers=headers, timeout=120).json()["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > \
        plain["input_tokens"] + plain["cache_read_input_tokens"] + 15
