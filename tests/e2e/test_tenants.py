"""Tenants end to end: admin and user keys, per-key quotas with OpenAI's 429 and headers, per-key usage and
metrics, the audit trail, key reload on SIGHUP, and tenants taking turns for slots. Real server, real models,
the official openai client where a client would use it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import time

import httpx
import openai
import pytest
import websockets
import yaml

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from tests.server_process import running_server
from tests.smollm2 import NO_END_TOKENS

SMOLLM2_END_TOKENS = NO_END_TOKENS  # banned: every answer runs to max_tokens
KEYS = {"keys": [
    {"key": "sk-ops", "label": "ops", "role": "admin"},
    {"key": "sk-alice", "label": "alice", "models": [SMOLLM2_FILE]},
    {"key": "sk-limited", "label": "limited", "limits": {"requests_per_minute": 2}},
    {"key": "sk-small", "label": "small", "limits": {"max_request_tokens": 1000, "max_streams": 1}},
    {"key": "sk-flood", "label": "flood"},
    {"key": "sk-quiet", "label": "quiet"},
    {"key": "sk-later", "label": "later", "limits": {"requests_per_minute": 5, "max_streams": 1}},
]}
WINDOW = 3  # --rate-window-seconds: the per-minute limits count in a 3 s window here
ASK = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    path.write_text(yaml.safe_dump(KEYS))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, key_file):
    flags = ("--api-key-file", str(key_file), "--private-metrics", "--rate-window-seconds", str(WINDOW),
             "--parallel", "2", "--n-ctx", "4096")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("tenants")) as process:
        yield process


def as_key(server, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}{path}", headers={"Authorization": f"Bearer {key}"},
                         timeout=120, **kwargs)


def status(server) -> dict:
    return as_key(server, "sk-ops", "GET", "/").json()


def test_a_user_key_cannot_unload_change_defaults_or_the_default_model(server):
    assert status(server)["loaded_models"][0]["model"] == SMOLLM2_FILE
    calls = [("POST", "/admin/models/unload", {"model": SMOLLM2_FILE}),
             ("PUT", f"/admin/models/{SMOLLM2_FILE}/defaults", {"temperature": 2.0, "max_tokens": 1}),
             ("POST", "/setModel", {"modelName": GEMMA_FILE}),
             ("POST", "/admin/models/load", {"model": GEMMA_FILE}),
             ("GET", "/admin/usage", None)]
    for method, path, body in calls:
        answer = as_key(server, "sk-alice", method, path, json=body)
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["error"]["code"] == "permission_denied" and "user key" in answer.json()["error"]["message"]
    after = status(server)
    assert [m["model"] for m in after["loaded_models"]] == [SMOLLM2_FILE] and after["default_model"] == SMOLLM2_FILE
    defaults = as_key(server, "sk-ops", "GET", f"/admin/models/{SMOLLM2_FILE}/defaults").json()["defaults"]
    assert defaults == {}


def test_an_admin_key_does_them_and_every_action_is_audited(server):
    path = f"/admin/models/{SMOLLM2_FILE}/defaults"
    assert as_key(server, "sk-ops", "PUT", path, json={"temperature": 0.5}).status_code == 200
    assert as_key(server, "sk-ops", "PUT", path, json={}).status_code == 200  # back to the catalog's
    assert as_key(server, "sk-ops", "POST", "/setModel", json={"modelName": GEMMA_FILE}).status_code == 200
    assert status(server)["default_model"] == GEMMA_FILE
    assert as_key(server, "sk-ops", "POST", "/setModel", json={"modelName": SMOLLM2_FILE}).status_code == 200
    unloaded = as_key(server, "sk-ops", "POST", "/admin/models/unload", json={"model": GEMMA_FILE})
    assert unloaded.status_code == 200 and unloaded.json()["unloaded"] is True
    log = server.log_path.read_text()
    for line in (f"audit key=ops action=set_defaults model={SMOLLM2_FILE}",
                 f"audit key=ops action=set_default_model model={GEMMA_FILE}",
                 f"audit key=ops action=unload model={GEMMA_FILE} was_loaded=True"):
        assert line in log
    assert "sk-ops" not in log and "sk-alice" not in log  # labels only, never keys


def test_a_user_key_sees_and_uses_only_its_models(server):
    client = server.openai_client("sk-alice")
    assert [model.id for model in client.models.list()] == [SMOLLM2_FILE]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=GEMMA_FILE, messages=ASK, max_tokens=2)
    assert client.chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=2).choices


def test_requests_per_minute_answer_429_with_openai_headers_and_reopen(server):
    client = server.openai_client("sk-limited", max_retries=0)
    remaining = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=2)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["1", "0"]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=2)
    headers = refused.value.response.headers
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-reset-requests"].endswith("s")
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= WINDOW
    time.sleep(retry_after + 0.2)  # the window has moved on: the key may ask again
    assert client.chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=2).choices


def test_request_size_and_streams_in_flight_are_bounded(server):
    client = server.openai_client("sk-small", max_retries=0)
    with pytest.raises(openai.RateLimitError, match="n x max_tokens"):
        client.chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=600, n=2)
    # Long enough (600 tokens, several seconds) to still be generating when the second request comes.
    body = {"model": SMOLLM2_FILE, "messages": ASK, "max_tokens": 600, "stream": True, "logit_bias": SMOLLM2_END_TOKENS}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer sk-small"}) as first:
        lines = first.iter_lines()
        next(lines)  # streaming: one request of this key is in flight
        with pytest.raises(openai.RateLimitError, match="in flight"):
            client.chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=2)
        assert any(line.startswith("data: [DONE]") for line in lines)  # the first one is not disturbed
    assert client.chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=2).choices


def test_usage_and_metrics_per_key_label_for_admins_only(server):
    server.openai_client("sk-alice").chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=3)
    assert as_key(server, "sk-alice", "GET", "/metrics").status_code == 403
    metrics = as_key(server, "sk-ops", "GET", "/metrics").text
    assert 'llm_key_requests_total{key="alice"}' in metrics and 'llm_key_tokens_total{key="alice",kind="prompt"}' in metrics
    assert 'llm_key_rate_limited_total{key="limited"} 1.0' in metrics
    assert "sk-" not in metrics
    usage = as_key(server, "sk-ops", "GET", "/admin/usage").json()["keys"]
    alice = usage["alice"]
    assert alice["role"] == "user" and alice["requests"] >= 3 and alice["completion_tokens"] >= 3
    assert alice["prompt_tokens"] > 0 and alice["in_flight"] == 0 and usage["limited"]["rate_limited"] == 1


def _first_token_time(server, key: str, max_tokens: int) -> float:
    body = {"model": SMOLLM2_FILE, "messages": ASK, "max_tokens": max_tokens, "stream": True,
            "logit_bias": SMOLLM2_END_TOKENS}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        lines = response.iter_lines()
        for line in lines:
            if '"content":"' in line:
                first = time.monotonic()
                break
        for _ in lines:
            pass
    return first


def test_a_flooding_key_does_not_starve_a_quiet_one(server):
    """Two slots, one key sends 8 streams at once; the quiet key's request, sent last, gets the next free slot
    instead of waiting for the flood's whole backlog (first come first served would start it last)."""
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        flood = [pool.submit(_first_token_time, server, "sk-flood", 48) for _ in range(8)]
        deadline = time.monotonic() + 30
        while status(server)["queued_requests"] < 6:  # both slots busy, the rest of the flood waiting
            assert time.monotonic() < deadline
            time.sleep(0.02)
        quiet = pool.submit(_first_token_time, server, "sk-quiet", 8).result()
        flood_starts = [future.result() for future in flood]
    started_after_quiet = sum(start > quiet for start in flood_starts)
    assert started_after_quiet >= 4, (sorted(flood_starts), quiet)


def test_sighup_reloads_the_key_file_without_cutting_a_stream(server, key_file):
    body = {"model": SMOLLM2_FILE, "messages": ASK, "max_tokens": 80, "stream": True, "logit_bias": SMOLLM2_END_TOKENS}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer sk-alice"}) as stream:
        lines = stream.iter_lines()
        next(lines)
        key_file.write_text(yaml.safe_dump({"keys": [*KEYS["keys"], {"key": "sk-new", "label": "newcomer"}]}))
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while as_key(server, "sk-new", "GET", "/v1/models").status_code != 200:
            assert time.monotonic() < deadline, "the new key was not loaded"
            time.sleep(0.1)
        assert any('"finish_reason":"length"' in line for line in lines)  # the stream ran to its end
    assert f"audit key=- action=reload_keys keys={len(KEYS['keys']) + 1}" in server.log_path.read_text()


def test_without_an_admin_key_operator_endpoints_are_off(tmp_path):
    with running_server("--api-key", "sk-only-user", log_dir=tmp_path) as only_users:
        answer = as_key(only_users, "sk-only-user", "POST", "/admin/models/unload", json={"model": SMOLLM2_FILE})
        assert answer.status_code == 403 and "no admin key is configured" in answer.json()["error"]["message"]
        assert as_key(only_users, "sk-only-user", "GET", "/v1/models").status_code == 200
        assert "No admin key: operator endpoints (/admin/*, /setModel) are off." in only_users.log_path.read_text()


def test_anthropic_clients_authenticate_with_x_api_key_and_get_anthropic_errors(server):
    """The anthropic SDK sends its key as `x-api-key`; refusals arrive as its own exception classes."""
    import anthropic

    alice = anthropic.Anthropic(base_url=server.base_url, api_key="sk-alice", max_retries=0)
    assert alice.messages.create(model=SMOLLM2_FILE, max_tokens=2, messages=ASK).content
    assert [model.id for model in alice.models.list()] == [SMOLLM2_FILE]
    with pytest.raises(anthropic.NotFoundError):  # a model this key may not use does not exist for it
        alice.messages.create(model=GEMMA_FILE, max_tokens=2, messages=ASK)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(base_url=server.base_url, api_key="sk-wrong", max_retries=0).messages.create(
            model=SMOLLM2_FILE, max_tokens=2, messages=ASK)
    assert refused.value.body["error"]["type"] == "authentication_error"
    limited = anthropic.Anthropic(base_url=server.base_url, api_key="sk-limited", max_retries=0)
    time.sleep(WINDOW)  # a fresh window for this key
    with pytest.raises(anthropic.RateLimitError) as limited_out:
        for _ in range(3):
            limited.messages.create(model=SMOLLM2_FILE, max_tokens=2, messages=ASK)
    assert limited_out.value.body["error"]["type"] == "rate_limit_error"


def test_a_stored_response_belongs_to_the_key_that_made_it(server):
    alice = server.openai_client("sk-alice")
    answer = alice.responses.create(model=SMOLLM2_FILE, input="Hello!", max_output_tokens=2)
    assert alice.responses.retrieve(answer.id).id == answer.id
    with pytest.raises(openai.NotFoundError):
        server.openai_client("sk-quiet").responses.retrieve(answer.id)
    with pytest.raises(openai.NotFoundError):
        server.openai_client("sk-quiet").responses.create(model=SMOLLM2_FILE, input="hi", max_output_tokens=2,
                                                          previous_response_id=answer.id)


def test_a_background_response_is_admitted_and_charged_like_any_request(server):
    """Background responses had an admission and charge loop of their own beside `serve` (their answer carried no
    quota headers); they go through `serve` now: the headers, the in-flight bound while they run, the tokens charged."""
    client = server.openai_client("sk-later", max_retries=0)
    raw = client.responses.with_raw_response.create(
        model=SMOLLM2_FILE, input="Tell a story.", max_output_tokens=120, background=True,
        extra_body={"logit_bias": SMOLLM2_END_TOKENS})
    assert raw.headers["x-ratelimit-limit-requests"] == "5" and raw.headers["x-ratelimit-remaining-requests"] == "4"
    queued = raw.parse()
    with pytest.raises(openai.RateLimitError, match="in flight"):  # max_streams 1: the running response holds it
        client.chat.completions.create(model=SMOLLM2_FILE, messages=ASK, max_tokens=2)
    deadline = time.monotonic() + 60
    while (done := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, done.status
        time.sleep(0.2)
    assert done.status == "incomplete" and done.usage.output_tokens == 120  # its budget ran out
    later = as_key(server, "sk-ops", "GET", "/admin/usage").json()["keys"]["later"]
    assert later["completion_tokens"] == 120 and later["in_flight"] == 0


def test_a_responses_socket_takes_the_key_in_its_handshake_and_keeps_to_the_key_s_models(server):
    url = server.base_url.replace("http://", "ws://") + "/v1/responses"

    async def connect(headers: dict) -> None:
        async with websockets.connect(url, additional_headers=headers):
            pass

    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            asyncio.run(connect(headers))
        assert refused.value.response.status_code == 403

    async def as_alice() -> list[dict]:
        async with websockets.connect(url, additional_headers={"x-api-key": "sk-alice"}) as socket:
            replies = []
            for model in (GEMMA_FILE, SMOLLM2_FILE):  # not hers, then hers
                await socket.send(json.dumps({"type": "response.create", "model": model, "input": "Hi",
                                              "max_output_tokens": 2}))
                while (reply := json.loads(await socket.recv()))["type"] not in ("error", "response.incomplete"):
                    pass
                replies.append(reply)
            return replies

    refused_model, answered = asyncio.run(as_alice())
    assert refused_model["type"] == "error" and refused_model["error"]["param"] == "model"
    assert answered["response"]["usage"]["output_tokens"] == 2
    # Her stored response and her conversations are hers alone.
    assert as_key(server, "sk-quiet", "GET", f"/v1/responses/{answered['response']['id']}").status_code == 404
    conversation = as_key(server, "sk-alice", "POST", "/v1/conversations", json={"metadata": {"k": "v"}}).json()
    assert as_key(server, "sk-alice", "GET", f"/v1/conversations/{conversation['id']}").status_code == 200
    assert as_key(server, "sk-quiet", "GET", f"/v1/conversations/{conversation['id']}").status_code == 404
    assert as_key(server, "sk-quiet", "POST", f"/v1/conversations/{conversation['id']}/items",
                  json={"items": [{"role": "user", "content": "mine"}]}).status_code == 404
