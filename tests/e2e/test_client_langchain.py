"""LangChain's OpenAI chat model (`langchain-openai`) against the real server and the instruct model: a tool
loop with `bind_tools` (the call, our tool's result, the answer), `.stream` of a tool call, and
`with_structured_output` (json_schema). The first call is forced by naming the tool (a 135M model rarely calls
on its own)."""

from __future__ import annotations

import json

import pydantic
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from backends.embedded_model import SMOLLM2_FILE

asked: list[str] = []


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    asked.append(city)
    return f"It is sunny and 21 degrees in {city}."


class Forecast(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    sunny: bool


@pytest.fixture(scope="module")
def llm(server) -> ChatOpenAI:
    return ChatOpenAI(model=SMOLLM2_FILE, base_url=f"{server.base_url}/v1", api_key="unused", temperature=0,
                      max_tokens=80, max_retries=0)


def test_a_bound_tool_loop(llm):
    question = HumanMessage("What is the weather in Paris?")
    call_message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    [call] = call_message.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] and call["id"]
    result = get_weather.invoke(call)  # a ToolMessage answering that call id
    answer = llm.bind_tools([get_weather]).invoke([question, call_message, result])
    assert asked and (answer.content.strip() or answer.tool_calls)


def test_a_streamed_tool_call_merges_into_one_valid_call(llm):
    chunks = list(llm.bind_tools([get_weather], tool_choice="get_weather").stream("Weather in Oslo?"))
    assert len(chunks) > 3 and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    [call] = merged.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    [raw] = merged.tool_call_chunks
    assert json.loads(raw["args"]) == call["args"]


def test_structured_output_with_json_schema(llm):
    forecast = llm.with_structured_output(Forecast, method="json_schema").invoke("Give the forecast for Rome.")
    assert isinstance(forecast, Forecast) and forecast.city
