"""ResponseWriter: engine chunks -> Responses events, checked against the openai SDK's own event types."""

from __future__ import annotations

import json

import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent

from api.pipeline.choice_output import ChoiceOutput
from api.responses.output import ResponseWriter
from api.responses.protocol import ResponseObject
from backends.base import GenerationFinished, TokenDelta, TokenLogprob, Usage
from chat.tools import NO_TOOLS, build_tool_plan

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
TOOLS = build_tool_plan([{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}], "auto", None)
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def run(pieces: list[str], finish_reason: str = "stop", tools=NO_TOOLS, logprobs: bool = False):
    writer = ResponseWriter(ResponseObject(model="m"), ChoiceOutput(tools), want_logprobs=logprobs)
    events = writer.start()
    for piece in pieces:
        entry = (TokenLogprob(piece, piece.encode(), -0.5),) if logprobs else ()
        events += writer.add(0, TokenDelta(piece, entry))
    events += writer.add(0, GenerationFinished(finish_reason, Usage(prompt_tokens=7, completion_tokens=len(pieces))))
    for event in events:
        EVENTS.validate_python(event)  # the SDK's strict types accept every event
    Response.model_validate(writer.response.model_dump(mode="json"))
    return events, writer.response


def shape(response: ResponseObject) -> list[tuple]:
    return [(item.type, item.status, getattr(item, "name", None), getattr(item, "arguments", None),
             [part.text for part in getattr(item, "content", [])]) for item in response.output]


def test_text_is_one_message_and_a_completed_response():
    events, response = run(["Hel", "lo", "!"])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert shape(response) == [("message", "completed", None, None, ["Hello!"])]
    assert response.status == "completed" and response.usage.total_tokens == 10


def test_length_finish_makes_items_and_the_response_incomplete():
    events, response = run(["a", "b"], finish_reason="length")
    assert events[-1]["type"] == "response.incomplete"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"


def test_whitespace_before_a_call_opens_no_message():
    _, response = run(["\n", CALL_TEXT], tools=TOOLS)
    assert shape(response) == [("function_call", "completed", "get_weather", '{"city": "Oslo"}', [])]


def test_text_then_call_gives_a_message_then_a_function_call():
    events, response = run(["Let me check.\n", CALL_TEXT], tools=TOOLS)
    assert [item.type for item in response.output] == ["message", "function_call"]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["output_index"] for e in done] == [0, 1]


def test_a_call_cut_off_is_an_incomplete_item():
    _, response = run([CALL_TEXT[:60]], finish_reason="length", tools=TOOLS)
    assert shape(response)[0][:3] == ("function_call", "incomplete", "get_weather")


def test_empty_answer_is_one_empty_message():
    _, response = run([])
    assert shape(response) == [("message", "completed", None, None, [""])]


def test_logprobs_ride_on_text_deltas_and_end_in_the_message():
    events, response = run(["Hi", " there"], logprobs=True)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [[lp["token"] for lp in e["logprobs"]] for e in deltas] == [["Hi"], [" there"]]
    assert [lp["token"] for lp in response.output[0].content[0].logprobs] == ["Hi", " there"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=1, max_value=len(CALL_TEXT) + 12), max_size=8))
def test_any_chunking_gives_the_same_answer(cuts):
    text = "Sure.\n" + CALL_TEXT
    points = sorted(set(c % len(text) for c in cuts) | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(points, points[1:])]
    events, response = run(pieces, tools=TOOLS)
    assert shape(response) == shape(run([text], tools=TOOLS)[1])
    arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert json.loads(arguments) == {"city": "Oslo"}
