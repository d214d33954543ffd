"""What every framework above relies on, checked on the raw wire bytes (httpx, no SDK smoothing anything over):
the tool-call delta shape, `developer` == `system`, `max_completion_tokens`, usage in streams, `parallel_tool_calls:
false`, strict json_schema, logprobs. Each is a complaint filed against some local server (Codex, agno, LiteLLM,
LangGraph reports)."""

from __future__ import annotations

import json

import httpx
import pytest

from backends.embedded_model import SMOLLM2_FILE
from tests.smollm2 import NO_END_TOKENS

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}, "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}]


def chat(server, body: dict, stream: bool = False):
    body = {"model": SMOLLM2_FILE, "temperature": 0, **body, "stream": stream}
    if not stream:
        return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_tool_call_deltas_have_the_shape_clients_parse(server):
    chunks = chat(server, {"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required", "max_tokens": 120},
                  stream=True)
    deltas = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas and all("index" in d for d in deltas)
    by_call: dict[int, list[dict]] = {}
    for delta in deltas:
        by_call.setdefault(delta["index"], []).append(delta)
    for index, parts in by_call.items():
        first, rest = parts[0], parts[1:]
        assert first["id"] and first["type"] == "function" and first["function"]["name"]
        assert all("id" not in d and "type" not in d and "name" not in d["function"] for d in rest)
        assert all(d["function"].get("arguments") for d in rest)  # no empty argument deltas after the first
        json.loads("".join(d["function"].get("arguments") or "" for d in parts))  # concatenate to valid JSON
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


def test_parallel_tool_calls_false_is_at_most_one_call(server):
    body = {"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 160}
    answer = chat(server, body).json()
    assert len(answer["choices"][0]["message"]["tool_calls"]) == 1
    assert answer["choices"][0]["finish_reason"] == "tool_calls"


def test_developer_is_system(server):
    rule = "Answer with one word."
    as_system = chat(server, {"messages": [{"role": "system", "content": rule}, *ASK], "max_tokens": 8}).json()
    as_developer = chat(server, {"messages": [{"role": "developer", "content": rule}, *ASK], "max_tokens": 8}).json()
    assert as_developer["usage"]["prompt_tokens"] == as_system["usage"]["prompt_tokens"]
    assert as_developer["choices"][0]["message"] == as_system["choices"][0]["message"]


def test_max_completion_tokens_bounds_the_answer_and_usage_comes_with_include_usage(server):
    body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_completion_tokens": 7,
            "logit_bias": NO_END_TOKENS, "stream_options": {"include_usage": True}}
    chunks = chat(server, body, stream=True)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


@pytest.mark.parametrize("strict", [True, False])
def test_strict_json_schema_is_enforced_or_refused_by_name(server, strict):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                        "uniqueItems": True, "maxItems": 3}},
              "required": ["tags"], "additionalProperties": False}
    body = {"messages": [{"role": "user", "content": "Give three tags for a cat photo."}], "max_tokens": 80,
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": strict}}}
    response = chat(server, body)
    if strict:  # uniqueItems cannot be enforced: a strict schema says so instead of pretending
        assert response.status_code == 400 and "uniqueItems" in response.json()["error"]["message"]
        return
    tags = json.loads(response.json()["choices"][0]["message"]["content"])["tags"]
    assert isinstance(tags, list) and len(tags) <= 3  # the rest of the schema still holds


def test_logprobs_are_there_when_asked(server):
    answer = chat(server, {"messages": ASK, "max_tokens": 5, "logprobs": True, "top_logprobs": 2,
                           "logit_bias": NO_END_TOKENS}).json()  # no end token: 5 tokens, 5 entries
    entries = answer["choices"][0]["logprobs"]["content"]
    assert len(entries) == answer["usage"]["completion_tokens"] and all(len(e["top_logprobs"]) == 2 for e in entries)
