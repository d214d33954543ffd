"""The Responses API (`/v1/responses`) end to end: the real server and gemma, the `openai` SDK strict."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pydantic
import pytest

from backends.embedded_model import SMOLLM2_FILE
from tests.custom_tool_grammars import RESPONSES_CUSTOM_TOOLS, assert_in_language
from tests.greedy_agreement import assert_same_or_parted_at_near_tie

MODEL = "gemma-3-270m-q4_k_m.gguf"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city.",
                "parameters": WEATHER}


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=120)


PERSON_FORMAT = {"type": "json_schema", "name": "person", "strict": True,
                 "schema": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                             "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                            "required": ["name", "age"], "additionalProperties": False}}


LOGPROBS = {"top_logprobs": 2, "include": ["message.output_text.logprobs"]}


def _text_logprobs(response) -> list:
    """The logprobs of every output_text part, in order (asked for with LOGPROBS)."""
    return [entry for item in response.output if item.type == "message"
            for part in item.content if part.type == "output_text" for entry in part.logprobs or []]


def _same_answer(first, second, label: str) -> bool:
    """Two greedy answers to the same prompt are the same, or part at a near tie (True: the same)."""
    for response in (first, second):
        assert len(_text_logprobs(response)) == (response.usage.output_tokens if response.output_text else 0)
    return assert_same_or_parted_at_near_tie(_text_logprobs(first), _text_logprobs(second), label) is None


def test_text_answer_equals_the_chat_answer_for_the_same_conversation(client):
    response = client.responses.create(model=MODEL, instructions="Answer briefly.", input="Name a colour.",
                                       max_output_tokens=12, temperature=0, **LOGPROBS)
    chat = client.chat.completions.create(
        model=MODEL, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}],
    )
    assert response.id.startswith("resp_") and response.model == MODEL
    assert response.instructions == "Answer briefly." and response.max_output_tokens == 12
    assert response.usage.input_tokens == chat.usage.prompt_tokens  # the same prompt, token for token
    # The same greedy answer, unless the second request's warm prefix rounded a near tie the other way.
    if assert_same_or_parted_at_near_tie(_text_logprobs(response), chat.choices[0].logprobs.content,
                                         "responses vs chat") is None:
        assert response.output_text == chat.choices[0].message.content
        assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
        assert response.usage.output_tokens == chat.usage.completion_tokens


def test_function_call_history_reaches_the_model_as_the_chat_history_does(client):
    call = {"name": "get_weather", "arguments": json.dumps({"city": "Oslo", "unit": "celsius"})}
    items = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "call_1", **call},
        {"type": "function_call_output", "call_id": "call_1", "output": json.dumps({"temperature": -3})},
    ]
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": call}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": -3})},
    ]
    response = client.responses.create(model=MODEL, input=items, tools=[WEATHER_TOOL], tool_choice="none",
                                        max_output_tokens=10, temperature=0, **LOGPROBS)
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                          logprobs=True, top_logprobs=2,
                                          tool_choice="none", tools=[{"type": "function", "function": {
                                              k: v for k, v in WEATHER_TOOL.items() if k != "type"}}])
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    if assert_same_or_parted_at_near_tie(_text_logprobs(response), chat.choices[0].logprobs.content,
                                         "responses vs chat") is None:
        assert response.output_text == chat.choices[0].message.content


def test_stream_events_build_the_same_answer_as_the_whole_response(client):
    kwargs = dict(model=MODEL, input="Tell me about owls.", max_output_tokens=16, temperature=0, **LOGPROBS)
    whole = client.responses.create(**kwargs)
    events = list(client.responses.create(stream=True, **kwargs))
    kinds = [event.type for event in events]
    final = events[-1].response
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          f"response.{final.status}"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == final.output_text
    if _same_answer(final, whole, "stream vs whole"):  # (two requests: apart only at a near tie, see greedy_agreement)
        assert final.output_text == whole.output_text and final.usage.output_tokens == whole.usage.output_tokens
        assert final.status == whole.status
    assert {event.response.id for event in events if hasattr(event, "response")} == {final.id}


def test_required_function_tool_gives_valid_arguments(client):
    response = client.responses.create(model=MODEL, input="Please use a tool.", tools=[WEATHER_TOOL],
                                       tool_choice="required", parallel_tool_calls=False, max_output_tokens=80)
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_streamed_function_call_through_the_sdk_stream_helper(client):
    with client.responses.stream(model=MODEL, input="Please use a tool.", tools=[WEATHER_TOOL],
                                 tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80,
                                 temperature=0.8, extra_body={"seed": 3}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    [call] = final.output
    assert len(deltas) > 3 and "".join(deltas) == call.arguments
    assert not any(event.type == "response.output_text.delta" for event in events)  # no markup leaks as text
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_json_schema_format_whole_and_streamed_into_a_pydantic_model(client):
    response = client.responses.create(model=MODEL, input="Describe a person.", text={"format": PERSON_FORMAT},
                                       max_output_tokens=60, temperature=0.8, extra_body={"seed": 5})
    jsonschema.validate(json.loads(response.output_text), PERSON_FORMAT["schema"])
    assert response.text.format.type == "json_schema" and response.text.format.name == "person"
    with client.responses.stream(model=MODEL, input="Describe a person.", text_format=Person,
                                 max_output_tokens=60, temperature=0.8, extra_body={"seed": 6}) as stream:
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Person)


def test_logprobs_when_included(client):
    response = client.responses.create(model=MODEL, input="Hello!", include=["message.output_text.logprobs"],
                                       top_logprobs=2, max_output_tokens=6, temperature=0)
    logprobs = response.output[0].content[0].logprobs
    assert len(logprobs) == response.usage.output_tokens
    assert "".join(entry.token for entry in logprobs) == response.output_text
    for entry in logprobs:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)  # greedy: the top token


@pytest.mark.parametrize("body, param", [
    ({"input": "hi", "background": True, "stream": True}, "background"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": []}, "input"),
    ({"input": "hi", "tools": [{"type": "code_interpreter_v9"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"type": "nope"}}]},
     "tools[0].parameters"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, "text.format.name"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(http, body, param):
    answer = http.post("/v1/responses", json={"model": MODEL, **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_hosted_tools_and_extra_includes_are_ignored_with_a_warning(client, server):
    """What Codex sends by default: a web_search tool, include reasoning.encrypted_content. Refusing them would
    stop it cold; nothing here can run them, so they are dropped and the server log says so."""
    answer = client.responses.create(model=MODEL, input="hi", max_output_tokens=4, tools=[{"type": "web_search"}],
                                     include=["reasoning.encrypted_content"])
    assert answer.status == "incomplete" and answer.output_text
    log = server.log_path.read_text()
    assert "Ignoring the hosted tool 'web_search'" in log and "reasoning.encrypted_content" in log


def test_unknown_model_is_404_through_the_sdk(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.body["code"] == "model_not_found"


def test_bare_path_serves_too(server):
    answer = httpx.post(f"{server.base_url}/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 2},
                        timeout=60)
    assert answer.status_code == 200 and answer.json()["object"] == "response"


def test_unknown_stored_responses_are_404(client, http):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve("resp_123")
    assert caught.value.body["code"] == "response_not_found" and "resp_123" in caught.value.body["message"]
    assert http.delete("/v1/responses/resp_123").json()["error"]["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_123", max_output_tokens=2)


def test_a_chain_of_stored_turns_is_continued_retrieved_listed_and_deleted(client):
    """store (the default) keeps each response; previous_response_id continues it, so only the new turn is sent."""
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=8, temperature=0)
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=8, temperature=0)
    third = client.responses.create(model=MODEL, input="And again?", previous_response_id=second.id,
                                    max_output_tokens=8, temperature=0)
    assert first.store and third.previous_response_id == second.id
    # Each turn's prompt holds the turns before it, most of it already in the prompt cache.
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.input_tokens
    again = client.responses.retrieve(second.id)
    assert again.id == second.id and again.output_text == second.output_text
    items = client.responses.input_items.list(second.id)
    assert [item.content[0].text for item in items.data] == ["What is my name?"]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    unstored = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


# A schema that forces a long answer (the grammar will not let the model stop early), so disconnects land mid-way.
LONG = {"format": {"type": "json_schema", "name": "story", "schema": {
    "type": "object", "properties": {"story": {"type": "string", "minLength": 1500}}, "required": ["story"]}}}


def _wait_idle(http, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while http.get("/").json()["active_sequences"] != 0:
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.05)


def test_disconnects_stop_the_generation(server, http):
    # Counted from its first token on; one token a step (no speculation), so it runs long enough to be counted.
    body = {"model": MODEL, "input": "Tell a story.", "text": LONG, "max_output_tokens": 900, "speculative": False}
    # The server is the session's, shared with earlier modules: a generation one of them left running (a client
    # gone without waiting for the cancel) would count too. Start from idle.
    _wait_idle(http, timeout=60)
    with httpx.Client(base_url=server.base_url, timeout=60) as session:
        with session.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
            lines = response.iter_lines()
            assert any(line.startswith("event: response.output_text.delta") for line, _ in zip(lines, range(40)))
            deadline = time.monotonic() + 2  # (an engine worker's figures come with its messages)
            while http.get("/").json()["active_sequences"] != 1:
                assert time.monotonic() < deadline, "the stream was not counted while it generated"
                time.sleep(0.05)
    _wait_idle(http)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=1.0)
    _wait_idle(http)


def _poll(client, response_id: str, done=("completed", "incomplete", "failed", "cancelled"), timeout: float = 60):
    deadline = time.monotonic() + timeout
    while (response := client.responses.retrieve(response_id)).status not in done:
        assert time.monotonic() < deadline, response.status
        time.sleep(0.1)
    return response


def test_a_background_response_is_polled_to_its_end(client):
    queued = client.responses.create(model=MODEL, input="Tell me about owls.", max_output_tokens=12, background=True)
    assert queued.status == "queued" and queued.background
    finished = _poll(client, queued.id)
    assert finished.status == "incomplete" and finished.output_text and finished.usage.output_tokens == 12


def test_a_background_response_can_be_cancelled(client, http):
    queued = client.responses.create(model=MODEL, input="Tell a story.", max_output_tokens=600, background=True,
                                     text=LONG)
    _poll(client, queued.id, done=("in_progress",))
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled" and client.responses.retrieve(queued.id).status == "cancelled"
    _wait_idle(http)  # the generation stopped on the server too


# ---------------------------------------------------------------- custom tools (input constrained by a grammar)

CUSTOM_INPUTS = {"apply_patch": "Create the file notes.txt with one line: hello. Use the patch tool.",
                 "pick_date": "Book my dentist appointment for the 3rd of March 2026."}


def _custom_call_request(name: str) -> dict:
    # Without speculation: its steps' shapes depend on step times learnt from earlier requests, and another shape
    # parts a seeded answer at a near tie; one such patch ran past max_output_tokens in CI.
    return {"model": SMOLLM2_FILE, "input": CUSTOM_INPUTS[name], "tools": RESPONSES_CUSTOM_TOOLS,
            "max_output_tokens": 300, "tool_choice": {"type": "custom", "name": name}, "temperature": 0.7,
            "extra_body": {"seed": 3, "speculative": False}}


@pytest.mark.parametrize("name", ["apply_patch", "pick_date"])
def test_a_custom_tool_call_item_input_is_in_its_grammar_language_whole_and_streamed(client, name):
    whole = client.responses.create(**_custom_call_request(name))
    assert whole.status == "completed"
    [call] = whole.output
    assert call.type == "custom_tool_call" and call.name == name and call.call_id.startswith("call_")
    assert call.id.startswith("ctc_")
    assert_in_language(name, call.input)
    assert whole.tools[0].type == "custom" and whole.tools[0].format.type == "grammar"

    events = list(client.responses.create(**_custom_call_request(name), stream=True))
    kinds = [event.type for event in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "custom_tool_call"
    assert kinds[-3:] == ["response.custom_tool_call_input.done", "response.output_item.done", "response.completed"]
    streamed = "".join(event.delta for event in events if event.type == "response.custom_tool_call_input.delta")
    assert_in_language(name, streamed)
    # (not compared with the whole answer's input: at temperature 0.7 the second request, its prompt now cached,
    # can sample another date from logits that differ in the last bits, even with the same seed)
    assert streamed == events[-3].input == events[-2].item.input
    assert not any(kind.startswith(("response.output_text", "response.function_call")) for kind in kinds)


def test_a_custom_grammar_that_cannot_be_enforced_is_a_400_naming_the_format(http):
    tool = {"type": "custom", "name": "t", "format": {"type": "grammar", "syntax": "regex", "definition": r"\bword"}}
    answer = http.post("/v1/responses", json={"model": SMOLLM2_FILE, "input": "hi", "tools": [tool]})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "tools[0].format" and "word boundary" in error["message"]


def test_a_custom_call_and_its_output_are_continued_as_history(client):
    first = client.responses.create(**_custom_call_request("pick_date"))
    [call] = first.output
    output = {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Booked at 9:00."}
    chained = client.responses.create(model=SMOLLM2_FILE, previous_response_id=first.id, input=[output],
                                      tools=RESPONSES_CUSTOM_TOOLS, max_output_tokens=16, temperature=0, **LOGPROBS)
    assert chained.status in ("completed", "incomplete")
    # the same turn sent whole, as items: the same prompt (the call and its output are in it)
    items = [{"role": "user", "content": CUSTOM_INPUTS["pick_date"]},
             {"type": "custom_tool_call", "call_id": call.call_id, "name": "pick_date", "input": call.input}, output]
    whole = client.responses.create(model=SMOLLM2_FILE, input=items, tools=RESPONSES_CUSTOM_TOOLS,
                                    max_output_tokens=16, temperature=0, **LOGPROBS)
    assert whole.usage.input_tokens == chained.usage.input_tokens > first.usage.input_tokens + 10
    if _same_answer(whole, chained, "whole vs chained"):
        assert whole.output_text == chained.output_text
