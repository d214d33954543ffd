"""The OpenAI Agents SDK (`openai-agents`) against the real server and the instruct model: a real agent loop
(the model calls our function tool, gets its result, answers), run whole and streamed, over both of the SDK's
model backends (Responses, its default, and Chat Completions), and a typed final output.

A 135M model rarely decides to call a tool on its own, so the first turn forces it (`tool_choice: required`); the
SDK's `reset_tool_choice` (its default) lets the model answer freely once the tool ran."""

from __future__ import annotations

import asyncio

import openai
import pydantic
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from backends.embedded_model import SMOLLM2_FILE

set_tracing_disabled(True)  # the SDK would upload traces to OpenAI


class Forecast(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    sunny: bool


def models(server):
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    return {"responses": OpenAIResponsesModel(model=SMOLLM2_FILE, openai_client=client),
            "chat": OpenAIChatCompletionsModel(model=SMOLLM2_FILE, openai_client=client)}


def weather_agent(model, asked: list[str]) -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"It is sunny and 21 degrees in {city}."

    return Agent(name="weather", instructions="Answer questions about the weather in one sentence.",
                 tools=[get_weather], model=model,
                 model_settings=ModelSettings(tool_choice="required", max_tokens=80, temperature=0))


@pytest.mark.parametrize("backend", ["responses", "chat"])
def test_an_agent_loop_calls_our_tool_and_answers(server, backend):
    asked: list[str] = []
    agent = weather_agent(models(server)[backend], asked)
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert asked and all(city.strip() for city in asked)  # the tool ran with the model's arguments
    assert isinstance(result.final_output, str) and result.final_output.strip()
    kinds = [item.type for item in result.new_items]
    assert kinds.index("tool_call_item") < kinds.index("tool_call_output_item") < kinds.index("message_output_item")


@pytest.mark.parametrize("backend", ["responses", "chat"])
def test_the_streamed_loop_reaches_the_same_kind_of_answer(server, backend):
    asked: list[str] = []
    agent = weather_agent(models(server)[backend], asked)

    async def run():
        result = Runner.run_streamed(agent, "What is the weather in Oslo?", max_turns=4)
        deltas = [event async for event in result.stream_events() if event.type == "raw_response_event"]
        return result, deltas

    result, deltas = asyncio.run(run())
    assert asked and result.final_output.strip() and len(deltas) > 3  # the answer arrived in pieces


@pytest.mark.parametrize("backend", ["responses", "chat"])
def test_a_typed_final_output(server, backend):
    agent = Agent(name="forecaster", instructions="Give the forecast for the city asked about.",
                  model=models(server)[backend], output_type=Forecast,
                  model_settings=ModelSettings(max_tokens=60, temperature=0))
    result = asyncio.run(Runner.run(agent, "Forecast for Rome?", max_turns=2))
    assert isinstance(result.final_output, Forecast) and result.final_output.city
