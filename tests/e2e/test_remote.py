"""The remote engine against real processes: the session's own server as an upstream (`--upstream`), plus
fake upstreams for the faults a real server cannot produce on demand (slow first byte, death mid-stream, 500s)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import httpx
import jsonschema
import openai
import pytest
import yaml

from settings import PROJECT_ROOT
from tests.fake_upstream import FakeUpstream
from tests.server_process import free_port, running_server, strict_client

KEY = "sekrit-upstream-key-123"
OURS = "ours/gemma-3-270m-q4_k_m.gguf"
ASK = [{"role": "user", "content": "Tell me about owls."}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}


@pytest.fixture(scope="module")
def fakes():
    with FakeUpstream() as first, FakeUpstream() as second:
        yield first, second


@pytest.fixture(scope="module")
def proxy(server, fakes, tmp_path_factory):
    models = tmp_path_factory.mktemp("proxy-models")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    (models / "models.yaml").write_text(yaml.safe_dump({
        "models": [{"id": "local-gemma", "path": str(PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"),
                    "settings": {"n_ctx": 512, "parallel": 1}}],
        "upstreams": [
            {"name": "fake", "base_urls": [fakes[0].base_url, fakes[1].base_url], "api_key_env": "FAKE_UPSTREAM_KEY",
             "headers": {"X-Team": "tests"}, "timeouts": {"first_byte": 1.0, "idle": 2.0}},
            {"name": "flaky", "base_urls": [closed, fakes[0].base_url], "models": ["echo"]},
            {"name": "dead", "base_urls": [closed], "models": ["m"]},
        ],
    }))
    os.environ["FAKE_UPSTREAM_KEY"] = KEY
    flags = ("--models-dir", str(models), "--model-name", "local-gemma", "--no-install-embedded-models",
             "--upstream", f"ours={server.base_url}/v1")
    try:
        with running_server(*flags, log_dir=tmp_path_factory.mktemp("proxy-server")) as process:
            deadline = time.monotonic() + 20
            while not {OURS, "fake/echo"} <= set(_card_ids(process)):  # discovery runs in the background
                assert time.monotonic() < deadline, _card_ids(process)
                time.sleep(0.1)
            yield process
    finally:
        os.environ.pop("FAKE_UPSTREAM_KEY", None)


def _card_ids(process) -> list[str]:
    return [card["id"] for card in httpx.get(f"{process.base_url}/v1/models").json()["data"]]


def client_for(base_url: str, key: str = "client-key") -> openai.OpenAI:
    return strict_client(base_url, key, max_retries=0)


def post(proxy, body, path="/v1/chat/completions"):
    return httpx.post(f"{proxy.base_url}{path}", json=body, headers={"Authorization": "Bearer client-key"}, timeout=60)


def test_upstream_models_are_listed_as_remote(proxy):
    cards = {card["id"]: card for card in httpx.get(f"{proxy.base_url}/v1/models").json()["data"]}
    assert cards[OURS]["engine"] == "remote" and cards[OURS]["upstream"]["healthy"]
    assert cards["flaky/echo"]["source"] == "upstream"


def test_non_stream_equals_calling_the_upstream_directly(server, proxy):
    kwargs = dict(messages=ASK, max_tokens=12, temperature=0)
    direct_client = client_for(f"{server.base_url}/v1")
    direct_client.chat.completions.create(model="gemma-3-270m-q4_k_m.gguf", **kwargs)  # warm, as the relayed one is
    direct = direct_client.chat.completions.create(model="gemma-3-270m-q4_k_m.gguf", **kwargs)
    relayed = client_for(f"{proxy.base_url}/v1").chat.completions.create(model=OURS, **kwargs)
    assert relayed.model == OURS
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    assert relayed.usage.completion_tokens == direct.usage.completion_tokens


def test_stream_equals_calling_the_upstream_directly(server, proxy):
    kwargs = dict(messages=ASK, max_tokens=12, temperature=0, stream=True)
    direct = client_for(f"{server.base_url}/v1").chat.completions.create(model="gemma-3-270m-q4_k_m.gguf", **kwargs)
    direct_text = "".join(c.choices[0].delta.content or "" for c in direct if c.choices)
    chunks = list(client_for(f"{proxy.base_url}/v1").chat.completions.create(model=OURS, **kwargs))
    assert {c.model for c in chunks} == {OURS}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct_text


def test_responses_are_relayed_whole_and_streamed(server, proxy):
    kwargs = dict(input="Tell me about owls.", max_output_tokens=12, temperature=0)
    direct = client_for(f"{server.base_url}/v1").responses.create(model="gemma-3-270m-q4_k_m.gguf", **kwargs)
    relayed = client_for(f"{proxy.base_url}/v1").responses.create(model=OURS, **kwargs)
    assert relayed.model == OURS and relayed.output_text == direct.output_text
    events = list(client_for(f"{proxy.base_url}/v1").responses.create(model=OURS, stream=True, **kwargs))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == direct.output_text
    assert events[-1].response.model == OURS


def test_a_remote_models_conversation_belongs_to_its_upstream(proxy, fakes):
    """`previous_response_id` on a remote model names a response its upstream stored: relayed untouched (we used to
    look it up in our own store first and answer 404 response_not_found)."""
    answer = client_for(f"{proxy.base_url}/v1").responses.create(
        model="fake/echo", input="And then?", previous_response_id="resp_upstream_1")
    assert answer.output_text == "continues resp_upstream_1"
    sent = [r["body"] for fake in fakes for r in fake.record.requests if r["path"] == "/v1/responses"]
    assert [body["previous_response_id"] for body in sent] == ["resp_upstream_1"]


def test_affinity_hints_reach_the_upstream_and_the_log(proxy, fakes):
    """A session header goes upstream as it came (so a router or vLLM behind us sees it too); a body's
    prompt_cache_key goes in the body; both are logged with the request."""
    response = httpx.post(f"{proxy.base_url}/v1/chat/completions", headers={"x-session-id": "agent-7"},
                          json={"model": "fake/echo", "messages": ASK, "prompt_cache_key": "team-cache"}, timeout=30)
    assert response.status_code == 200, response.text
    seen = [r for fake in fakes for r in fake.record.requests if r["body"].get("prompt_cache_key")][-1]
    assert seen["headers"]["x-session-id"] == "agent-7" and seen["body"]["prompt_cache_key"] == "team-cache"
    keyed = client_for(f"{proxy.base_url}/v1").chat.completions.create(model="fake/echo", messages=ASK,
                                                                       prompt_cache_key="key-only")
    assert keyed.choices[0].message.content is not None
    sent = [r for fake in fakes for r in fake.record.requests if r["body"].get("prompt_cache_key") == "key-only"]
    assert sent and "x-session-id" not in sent[-1]["headers"]  # (a body key is not turned into a header)
    log = proxy.log_path.read_text(errors="replace")
    assert "session=agent-7" in log and "session=key-only" in log


def test_tools_pass_through(proxy):
    response = client_for(f"{proxy.base_url}/v1").chat.completions.create(
        model=OURS, messages=ASK, max_tokens=80, temperature=0, parallel_tool_calls=False,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}], tool_choice="required",
    )
    (call,) = response.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_chunks_are_relayed_as_they_arrive(proxy):
    arrivals = []
    body = {"model": "fake/paced", "messages": ASK, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - start)
    # The upstream sends a chunk every 0.5 s: each must reach us before the upstream sends the next.
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 6 and all(gap > 0.3 for gap in gaps[:4]), arrivals


def test_api_key_is_injected_never_forwarded_from_the_client_and_never_echoed(proxy, fakes):
    response = post(proxy, {"model": "fake/echo", "messages": ASK, "temperature": 0.3, "x_vendor": {"a": 1}})
    assert response.status_code == 200 and response.json()["model"] == "fake/echo"
    seen = [r for fake in fakes for r in fake.record.requests if r["body"].get("x_vendor")][-1]
    assert seen["headers"]["authorization"] == f"Bearer {KEY}" and seen["headers"]["x-team"] == "tests"
    assert seen["body"] == {"model": "echo", "messages": ASK, "temperature": 0.3, "x_vendor": {"a": 1}}
    for text in (response.text, httpx.get(f"{proxy.base_url}/v1/models").text, httpx.get(f"{proxy.base_url}/").text,
                 proxy.log_path.read_text(errors="replace")):
        assert KEY not in text


def test_requests_spread_over_the_pool(proxy, fakes):
    before = [len(fake.record.requests) for fake in fakes]

    def stream_paced(_):
        with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", timeout=30,
                          json={"model": "fake/paced", "messages": ASK, "stream": True}) as response:
            return sum(1 for line in response.iter_lines() if line.startswith("data: {"))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(stream_paced, range(4))) == [6] * 4
    assert [len(fake.record.requests) - b for fake, b in zip(fakes, before)] == [2, 2]  # fewest in flight wins


def test_failover_to_the_healthy_url(proxy):
    for _ in range(4):
        assert post(proxy, {"model": "flaky/echo", "messages": ASK}).status_code == 200
    card = httpx.get(f"{proxy.base_url}/v1/models/flaky/echo").json()
    assert [url["healthy"] for url in card["upstream"]["urls"]] == [False, True]


@pytest.mark.parametrize(("model", "stream", "status", "code"), [
    ("fake/fails-500", False, 502, "upstream_server_error"),
    ("fake/fails-500", True, 502, "upstream_server_error"),
    ("dead/m", False, 502, "upstream_unavailable"),
    ("fake/slow-first-byte", False, 504, "upstream_timeout"),
    ("fake/slow-first-byte", True, 504, "upstream_timeout"),
])
def test_upstream_failures_map_to_gateway_errors(proxy, model, stream, status, code):
    response = post(proxy, {"model": model, "messages": ASK, "stream": stream})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "upstream_error" and error["message"]


def test_upstream_4xx_passes_through_with_its_message(proxy):
    response = post(proxy, {"model": "fake/rejects-400", "messages": ASK})
    assert response.status_code == 400
    assert response.json()["error"] == {"message": "temperature too hot", "type": "invalid_request_error",
                                        "param": "temperature", "code": "bad_temperature"}


def test_a_stream_that_dies_ends_with_one_error_event(proxy):
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", timeout=30,
                      json={"model": "fake/dies-midway", "messages": ASK, "stream": True}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["w0 ", "w1 "]
    assert events[-1]["error"]["code"] == "upstream_disconnected"


def test_client_disconnect_cancels_the_upstream_request(proxy, fakes):
    before = sum(fake.record.cancelled_streams for fake in fakes)
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", timeout=30,
                      json={"model": "fake/endless", "messages": ASK, "stream": True}) as response:
        for _, _ in zip(range(3), response.iter_lines()):
            pass
    deadline = time.monotonic() + 5
    while sum(fake.record.cancelled_streams for fake in fakes) == before:
        assert time.monotonic() < deadline, "the upstream kept streaming after the client left"
        time.sleep(0.05)


def test_completions_and_embeddings_pass_through(proxy):
    completion = post(proxy, {"model": "fake/echo", "prompt": "Hi"}, "/v1/completions")
    assert completion.status_code == 200 and completion.json()["model"] == "fake/echo"
    embedding = post(proxy, {"model": "fake/echo", "input": "Hi"}, "/v1/embeddings")
    assert embedding.status_code == 200 and embedding.json()["data"][0]["embedding"] == [0.1, 0.2]
    local = post(proxy, {"model": "local-gemma", "prompt": "Hi", "max_tokens": 2}, "/v1/completions")
    assert local.status_code == 200 and local.json()["model"] == "local-gemma"  # served here, not relayed
    local = post(proxy, {"model": "local-gemma", "input": "Hi"}, "/v1/embeddings")
    assert local.status_code == 501 and local.json()["error"]["code"] == "not_implemented"  # a GGUF chat model
    ranked = post(proxy, {"model": "fake/echo", "query": "q", "documents": ["a", "b"]}, "/v1/rerank")
    assert ranked.status_code == 200 and [r["index"] for r in ranked.json()["results"]] == [1, 0]
    local = post(proxy, {"model": "local-gemma", "query": "q", "documents": ["a", "b"]}, "/v1/rerank")
    assert local.status_code == 400 and local.json()["error"]["param"] == "model"


def test_anthropic_messages_reach_an_openai_upstream_through_the_chat_path(server, proxy):
    """The upstream (our session server, here only OpenAI-compatible as far as the proxy knows) gets a chat
    completion; the client gets Messages, text and tool_use alike, whole and streamed."""
    import anthropic

    direct = client_for(f"{server.base_url}/v1").chat.completions.create(
        model="gemma-3-270m-q4_k_m.gguf", messages=ASK, max_tokens=12, temperature=0)
    client = anthropic.Anthropic(base_url=proxy.base_url, api_key="client-key", max_retries=0)
    kwargs = dict(model=OURS, max_tokens=12, messages=ASK, extra_body={"temperature": 0})
    message = client.messages.create(**kwargs)
    assert message.model == OURS and message.content[0].text == direct.choices[0].message.content
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 12
    with client.messages.stream(**kwargs) as stream:
        assert "".join(stream.text_stream) == message.content[0].text
        assert stream.get_final_message().usage.output_tokens == 12
    tool = {"name": "get_weather", "input_schema": WEATHER}
    called = client.messages.create(model=OURS, max_tokens=80, messages=ASK, tools=[tool], extra_body={"temperature": 0},
                                    tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    [use] = called.content
    assert use.type == "tool_use" and called.stop_reason == "tool_use"
    jsonschema.validate(use.input, WEATHER)
