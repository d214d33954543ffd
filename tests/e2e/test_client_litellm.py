"""LiteLLM's `completion` through its OpenAI-compatible provider (`openai/<model>`, `api_base` = our server)
against the instruct model: a tool round trip, and a streamed tool call rebuilt by `stream_chunk_builder`. The
first call is forced (`tool_choice: required`): a 135M model rarely calls on its own."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: never fetch the price list
import litellm  # noqa: E402

from backends.embedded_model import SMOLLM2_FILE  # noqa: E402

litellm.telemetry = False
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def target(server) -> dict:
    return {"model": f"openai/{SMOLLM2_FILE}", "api_base": f"{server.base_url}/v1", "api_key": "unused",
            "temperature": 0, "max_tokens": 80}


def test_a_tool_round_trip(target):
    first = litellm.completion(messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                               **target)
    [call] = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    assert first.choices[0].finish_reason == "tool_calls"
    history = [*ASK, first.choices[0].message.model_dump(),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."}]
    answer = litellm.completion(messages=history, tools=[WEATHER], **target)
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_streamed_tool_call_is_rebuilt(target):
    chunks = list(litellm.completion(messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                                     stream=True, stream_options={"include_usage": True}, **target))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=ASK)
    [call] = rebuilt.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    assert rebuilt.usage.completion_tokens > 0
