"""Responses over a WebSocket (`/v1/responses`, OpenAI's WebSocket mode) against the real server and SmolLM2: the
`openai` SDK's own `responses.connect()` (its typed events), and the `websockets` client for what the SDK hides:
several conversations on one socket (`stream_id` lanes, run side by side), `store: false` chains continued from the
connection's memory, bad events answered with error events on a socket that stays usable, a closed socket
cancelling its generation, pings answered."""

from __future__ import annotations

import asyncio
import json
import time

import websockets

from backends.embedded_model import SMOLLM2_FILE

MODEL = SMOLLM2_FILE
ENDS = ("response.completed", "response.incomplete", "response.failed")
# A schema that forces a long answer (the grammar does not let the model stop early).
LONG = {"format": {"type": "json_schema", "name": "story", "schema": {
    "type": "object", "properties": {"story": {"type": "string", "minLength": 1500}}, "required": ["story"]}}}


def socket_url(server) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/responses"


def test_the_sdk_connection_streams_the_answer_http_gives(client):
    body = {"model": MODEL, "input": "Name a fruit.", "max_output_tokens": 12, "temperature": 0}
    over_http = client.responses.create(**body)
    with client.responses.connect() as connection:
        connection.send({"type": "response.create", **body})
        deltas, final = [], None
        for event in connection:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ENDS:
                final = event.response
                break
        connection.send({"type": "response.create", **body, "model": "no-such-model"})
        error = next(iter(connection))
    assert final.output_text == "".join(deltas) == over_http.output_text
    assert final.usage.input_tokens == over_http.usage.input_tokens and final.id != over_http.id
    assert client.responses.retrieve(final.id).output_text == final.output_text  # stored, as over HTTP
    assert error.type == "error" and error.status == 404 and error.error.code == "model_not_found"


async def _until_end(socket, lane: str | None = None) -> tuple[list[dict], dict]:
    """Events up to the end of the next response (of `lane`, if given), and that response."""
    events = []
    while True:
        event = json.loads(await socket.recv())
        events.append(event)
        if event["type"] in ENDS and (lane is None or event.get("stream_id") == lane):
            return events, event["response"]
        if event["type"] == "error":
            raise AssertionError(event)


def test_lanes_multiplex_conversations_and_store_false_chains_continue_from_the_connection(server):
    async def scenario():
        async with websockets.connect(socket_url(server)) as socket:
            opening = {"type": "response.create", "model": MODEL, "max_output_tokens": 24, "temperature": 0,
                       "store": False}
            await socket.send(json.dumps({**opening, "stream_id": "cats", "input": "Tell me about cats."}))
            await socket.send(json.dumps({**opening, "stream_id": "dogs", "input": "Tell me about dogs."}))
            events = []
            ends: dict[str, dict] = {}
            while len(ends) < 2:
                event = json.loads(await socket.recv())
                events.append(event)
                if event["type"] in ENDS:
                    ends[event["stream_id"]] = event["response"]
            # Each lane goes on with only its new input: its history comes from the connection (nothing stored).
            follow_up = {**opening, "input": "And in one word?", "max_output_tokens": 4}
            await socket.send(json.dumps({**follow_up, "stream_id": "cats",
                                          "previous_response_id": ends["cats"]["id"]}))
            _, cats_again = await _until_end(socket, "cats")
            return events, ends, cats_again

    events, ends, cats_again = asyncio.run(scenario())
    lanes = [event["stream_id"] for event in events]
    assert set(lanes) == {"cats", "dogs"}
    switches = sum(1 for before, after in zip(lanes, lanes[1:]) if before != after)
    assert switches >= 2  # interleaved (one after the other would switch once): the lanes ran side by side
    for lane in ("cats", "dogs"):
        text = "".join(e["delta"] for e in events if e["stream_id"] == lane and e["type"] == "response.output_text.delta")
        assert text == ends[lane]["output"][0]["content"][0]["text"]
    first = ends["cats"]["usage"]
    assert cats_again["previous_response_id"] == ends["cats"]["id"] and cats_again["store"] is False
    assert cats_again["usage"]["input_tokens"] > first["input_tokens"] + first["output_tokens"]  # the whole turn
    assert cats_again["usage"]["input_tokens_details"]["cached_tokens"] >= first["input_tokens"]


def test_bad_events_get_error_events_and_the_socket_stays_usable(server):
    async def scenario():
        async with websockets.connect(socket_url(server)) as socket:
            replies = []
            for message in ("not json", json.dumps(["a list"]), json.dumps({"type": "session.update"}),
                            json.dumps({"type": "response.create", "model": MODEL, "input": "Hi", "temperature": 5}),
                            json.dumps({"type": "response.create", "model": MODEL, "input": "Hi", "background": True}),
                            json.dumps({"type": "response.create", "model": MODEL, "input": "Hi",
                                        "previous_response_id": "resp_unknown", "stream_id": "x"})):
                await socket.send(message)
                replies.append(json.loads(await socket.recv()))
            await asyncio.wait_for(await socket.ping(), timeout=5)  # (pongs come from the server's WebSocket layer)
            await socket.send(json.dumps({"type": "response.create", "model": MODEL, "input": "Hi",
                                          "max_output_tokens": 3}))
            _, answered = await _until_end(socket)
            return replies, answered

    replies, answered = asyncio.run(scenario())
    assert all(reply["type"] == "error" for reply in replies)
    assert [reply["status"] for reply in replies] == [400, 400, 400, 400, 400, 404]
    assert [reply["error"]["param"] for reply in replies] == [None, "type", "type", "temperature", "background",
                                                              "response_id"]
    assert replies[0]["error"]["code"] == "invalid_json" and replies[-1]["stream_id"] == "x"
    assert answered["status"] == "incomplete" and answered["usage"]["output_tokens"] == 3


def test_closing_the_socket_cancels_its_generation(server, http):
    def active() -> int:
        return http.get("/").json()["active_sequences"]

    async def scenario():
        async with websockets.connect(socket_url(server)) as socket:
            await socket.send(json.dumps({"type": "response.create", "model": MODEL, "input": "Tell a story.",
                                          "text": LONG, "max_output_tokens": 900, "speculative": False}))
            while json.loads(await socket.recv())["type"] != "response.output_text.delta":
                pass
            return await asyncio.to_thread(active)

    deadline = time.monotonic() + 60
    while active() != 0:  # (the session's server: start from idle)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert asyncio.run(scenario()) == 1  # generating while the socket was open
    deadline = time.monotonic() + 5
    while active() != 0:
        assert time.monotonic() < deadline, "the generation went on after its socket closed"
        time.sleep(0.05)


def test_a_warm_up_generates_nothing_and_its_turn_starts_from_the_cache(server):
    async def scenario():
        async with websockets.connect(socket_url(server)) as socket:
            opening = {"type": "response.create", "model": MODEL, "store": False, "temperature": 0,
                       "instructions": "You are a terse assistant who knows geography. " * 8}
            await socket.send(json.dumps({**opening, "generate": False, "input": []}))  # the instructions alone
            await _until_end(socket)
            await socket.send(json.dumps({**opening, "generate": False,
                                          "input": "I will ask about capitals of Europe."}))
            events, warmed = await _until_end(socket)
            await socket.send(json.dumps({**opening, "previous_response_id": warmed["id"], "max_output_tokens": 8,
                                          "input": "What is the capital of Spain?"}))
            _, answered = await _until_end(socket)
            return events, warmed, answered

    events, warmed, answered = asyncio.run(scenario())
    assert warmed["status"] == "completed" and warmed["output"] == [] and warmed["usage"]["output_tokens"] == 0
    assert not any(event["type"].startswith("response.output_") for event in events)
    assert answered["usage"]["input_tokens_details"]["cached_tokens"] >= warmed["usage"]["input_tokens"] - 8
    assert answered["output"][0]["content"][0]["text"]
