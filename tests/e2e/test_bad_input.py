"""Bad requests get OpenAI-shaped 4xx errors, never a traceback or a hang, and the server keeps serving."""

from __future__ import annotations

import openai
import pytest

MODEL = "gemma-3-270m-q4_k_m.gguf"
USER = [{"role": "user", "content": "hi"}]

BAD_BODIES = {
    "missing messages": ({"model": MODEL}, 400, "messages"),
    "empty messages": ({"model": MODEL, "messages": []}, 400, "messages"),
    "bad role": ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    "messages not a list": ({"model": MODEL, "messages": "hi"}, 400, "messages"),
    "temperature wrong type": ({"model": MODEL, "messages": USER, "temperature": "hot"}, 400, "temperature"),
    "temperature out of range": ({"model": MODEL, "messages": USER, "temperature": 7}, 400, "temperature"),
    "top_logprobs 21": ({"model": MODEL, "messages": USER, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    "top_logprobs without logprobs": ({"model": MODEL, "messages": USER, "top_logprobs": 2}, 400, "top_logprobs"),
    "negative max_tokens": ({"model": MODEL, "messages": USER, "max_tokens": -1}, 400, "max_tokens"),
    "n too large": ({"model": MODEL, "messages": USER, "n": 1000}, 400, "n"),
    "image part": (
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages[0].content[0].type",
    ),
    "logit_bias key not a token id": ({"model": MODEL, "messages": USER, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    "logit_bias token outside vocabulary": ({"model": MODEL, "messages": USER, "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
    "tool_choice names an unknown function": (
        {"model": MODEL, "messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}],
         "tool_choice": {"type": "function", "function": {"name": "g"}}},
        400,
        "tool_choice",
    ),
    "tool_choice required without tools": ({"model": MODEL, "messages": USER, "tool_choice": "required"}, 400, "tool_choice"),
    "tool with an invalid schema": (
        {"model": MODEL, "messages": USER,
         "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
        400,
        "tools[0].function.parameters",
    ),
    "tool with a bad name": (
        {"model": MODEL, "messages": USER, "tools": [{"type": "function", "function": {"name": "no spaces"}}]},
        400,
        "tools[0].function.name",
    ),
    "unsupported feature of a strict schema": (
        {"model": MODEL, "messages": USER, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "strict": True, "schema": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}},
        400,
        "response_format.json_schema.schema",
    ),
    "grammar that does not parse": ({"model": MODEL, "messages": USER, "grammar": "root ::= ("}, 400, "grammar"),
    "max_tokens beyond context": ({"model": MODEL, "messages": USER, "max_tokens": 100000}, 400, "max_tokens"),
    "unknown model": ({"model": "no-such-model", "messages": USER}, 404, "model"),
}

TRAVERSAL_NAMES = ["../settings.py", "../../etc/passwd", "/etc/passwd", "..", "models/../server.py", "%2e%2e/x", "./"]


def assert_openai_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["code"], str)
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in response.text
    return error


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_an_openai_error(http, case):
    body, status, param = BAD_BODIES[case]
    assert_openai_error(http.post("/v1/chat/completions", json=body), status, param)
    assert http.get("/health").status_code == 200


def test_malformed_json_is_400(http):
    response = http.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_path_traversal_model_names_are_not_found(http, name):
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": name, "messages": USER}), 404, "model")
    assert error["code"] == "model_not_found"
    assert_openai_error(http.post("/setModel", json={"modelName": name}), 404)


def test_prompt_longer_than_context(http):
    long_text = "lighthouse " * 3000
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": long_text}]})
    error = assert_openai_error(response, 400, "messages")
    assert error["code"] == "context_length_exceeded"
    streamed = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": long_text}]},
    )
    assert assert_openai_error(streamed, 400)["code"] == "context_length_exceeded"


def test_unknown_route_is_openai_shaped(http):
    assert_openai_error(http.get("/v1/nothing-here"), 404)


def test_unknown_fields_and_explicit_nulls_are_accepted(http):
    body = {
        "model": MODEL, "messages": USER, "max_tokens": 2, "store": False, "metadata": {"a": "b"},
        "user": "u1", "temperature": None, "top_p": None, "stop": None, "seed": None, "n": None,
        "logit_bias": None, "stream_options": None, "frequency_penalty": None, "some_vendor_field": 1,
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 5000}])
    assert too_long.value.code == "context_length_exceeded"


def test_restore_cache_ignores_fields_it_does_not_define(http):
    # Found by the fuzzer: an invalid chat-only field made the re-validation inside the handler a 500.
    response = http.post("/restore_cache", json={"n": [], "messages": [{"role": "tool"}]})
    assert response.status_code == 200 and response.json()["prompt_tokens"] > 0
