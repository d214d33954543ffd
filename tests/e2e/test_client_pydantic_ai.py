"""Pydantic AI's `Agent` on its OpenAI chat model against the real server and the instruct model: a tool
loop with a typed result, run whole and streamed. The tool is offered on the first step only and tool use is
required there (a 135M model rarely calls on its own); the typed result then comes through Pydantic AI's own
output tool, which our grammar makes valid."""

from __future__ import annotations

import asyncio

import pydantic
from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.tools import ToolDefinition

from backends.embedded_model import SMOLLM2_FILE


class Forecast(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    sunny: bool


def weather_agent(server, asked: list[str]) -> Agent:
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"It is sunny and 21 degrees in {city}."

    async def first_step_only(ctx: RunContext, tool: ToolDefinition) -> ToolDefinition | None:
        return tool if ctx.run_step <= 1 else None

    model = OpenAIChatModel(SMOLLM2_FILE, provider=OpenAIProvider(base_url=f"{server.base_url}/v1", api_key="unused"))
    def settings(ctx: RunContext) -> dict:  # per step: the first must call get_weather
        return {"temperature": 0, "max_tokens": 80, **({"tool_choice": ["get_weather"]} if ctx.run_step <= 1 else {})}

    return Agent(model, output_type=Forecast, instructions="Report the weather.",
                 tools=[Tool(get_weather, prepare=first_step_only)], model_settings=settings)


def test_a_tool_loop_with_a_typed_result(server):
    asked: list[str] = []
    result = asyncio.run(weather_agent(server, asked).run("What is the weather in Paris?"))
    assert asked and isinstance(result.output, Forecast) and result.output.city


def test_the_streamed_run(server):
    asked: list[str] = []

    async def run():
        async with weather_agent(server, asked).run_stream("What is the weather in Oslo?") as stream:
            partials = [partial async for partial in stream.stream_output(debounce_by=None)]
            return partials, await stream.get_output()

    partials, output = asyncio.run(run())
    assert asked and isinstance(output, Forecast) and partials
