"""Operations and security against a real server: API keys, CORS, body limits, request ids and logs, metrics,
hostile input, a cancellation storm, graceful shutdown."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import time

import httpx
import openai
import pytest
import yaml

from settings import PROJECT_ROOT
from tests.e2e.conftest import GEMMA_END_TOKENS
from tests.server_process import ServerProcess, running_server

GEMMA = str(PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf")
KEY, LIMITED_KEY = "test-key-alpha-0001", "test-key-beta-0002"
ASK = [{"role": "user", "content": "Tell me about owls."}]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    models = tmp_path_factory.mktemp("ops-models")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "main", "path": GEMMA, "settings": {"n_ctx": 4096, "parallel": 4}},
        {"id": "other", "path": GEMMA, "aliases": ["side"], "settings": {"n_ctx": 1024, "parallel": 1}},
    ]}))
    key_file = models / "keys.txt"
    key_file.write_text(f"# team keys\n{LIMITED_KEY} side\n")
    flags = ("--models-dir", str(models), "--model-name", "main", "--no-install-embedded-models",
             "--api-key", KEY, "--api-key-file", str(key_file), "--cors-origins", "http://allowed.example",
             "--max-body-bytes", "65536", "--body-timeout", "1", "--log-format", "json", "--max-tokens-limit", "512")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("ops-server")) as server:
        yield server


def get(server, path, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.base_url}{path}", headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


def post(server, path, body, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.base_url}{path}", json=body, headers={**headers, **kwargs.pop("headers", {})},
                      timeout=60, **kwargs)


def client(server, key=KEY) -> openai.OpenAI:
    return server.openai_client(key, max_retries=0)


def test_api_keys_guard_everything_but_health(secured):
    assert httpx.get(f"{secured.base_url}/health").status_code == 200
    for key in (None, "wrong-key"):
        response = get(secured, "/v1/models", key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert get(secured, "/v1/models").status_code == 200
    assert httpx.get(f"{secured.base_url}/v1/models", headers={"x-api-key": KEY}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(secured, "nope").models.list()
    assert client(secured).chat.completions.create(model="main", messages=ASK, max_tokens=2).choices


def test_a_limited_key_sees_only_its_models(secured):
    assert [m.id for m in client(secured, LIMITED_KEY).models.list()] == ["other"]
    with pytest.raises(openai.NotFoundError):
        client(secured, LIMITED_KEY).chat.completions.create(model="main", messages=ASK, max_tokens=2)
    assert client(secured, LIMITED_KEY).chat.completions.create(model="side", messages=ASK, max_tokens=2).choices


def test_cors_only_for_configured_origins(secured):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{secured.base_url}/v1/chat/completions",
                            headers={"Origin": "http://allowed.example", **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://allowed.example"
    other = httpx.options(f"{secured.base_url}/v1/chat/completions", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


def test_oversized_and_slow_bodies_are_refused(secured):
    big = post(secured, "/v1/chat/completions", {"model": "main", "messages": [{"role": "user", "content": "x" * 70000}]})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    with socket.create_connection(("127.0.0.1", secured.port)) as sock:  # slowloris: announce a body, send none
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        sock.settimeout(10)
        answer = ""
        while "request_timeout" not in answer and (data := sock.recv(4096)):  # headers and body may come apart
            answer += data.decode()
    assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer


@pytest.mark.parametrize("raw", [
    b"\xff\xfe\x00garbage", b'{"model": "main", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b"[" * 5000 + b"]" * 5000, b'{"model": "main", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
])
def test_hostile_bodies_are_400_not_500(secured, raw):
    response = httpx.post(f"{secured.base_url}/v1/chat/completions", content=raw,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("field", "value"), [("n", 10**6), ("max_tokens", 10**9), ("top_logprobs", 10**4),
                                              ("max_tokens", 513)])
def test_huge_numbers_are_400(secured, field, value):
    body = {"model": "main", "messages": ASK, field: value, **({"logprobs": True} if field == "top_logprobs" else {})}
    response = post(secured, "/v1/chat/completions", body)
    assert response.status_code == 400 and response.json()["error"]["param"] == field


def test_request_id_is_honoured_and_logged_as_json_without_keys(secured):
    response = post(secured, "/v1/chat/completions", {"model": "main", "messages": ASK, "max_tokens": 3},
                    headers={"x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    assert get(secured, "/health").headers["x-request-id"].startswith("req_")
    time.sleep(0.2)
    log = secured.log_path.read_text(errors="replace")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{") and "trace-42" in line]
    (entry,) = lines
    fields = json.loads(entry["message"])
    assert fields["model"] == "main" and fields["engine"] == "llama.cpp" and fields["status"] == 200
    assert fields["completion_tokens"] == 3 and fields["ttft_s"] > 0
    assert KEY not in log and LIMITED_KEY not in log


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_tokens_and_state(secured):
    before = get(secured, "/metrics").text
    client(secured).chat.completions.create(model="main", messages=ASK, max_tokens=4, logit_bias=GEMMA_END_TOKENS)
    after = get(secured, "/metrics").text
    route = "/v1/chat/completions"
    assert _metric(after, "llm_requests_total", route=route, status="200") - \
        _metric(before, "llm_requests_total", route=route, status="200") == 1
    assert _metric(after, "llm_completion_tokens_total", model="main") - \
        _metric(before, "llm_completion_tokens_total", model="main") == 4
    assert _metric(after, "llm_time_to_first_token_seconds_count", model="main") >= 1
    assert _metric(after, "llm_loaded_models") >= 1 and _metric(after, "llm_active_sequences", model="main") == 0
    assert _metric(after, "llm_requests_total", route="unmatched", status="401") >= 1  # refused before routing


def test_cancellation_storm_leaks_no_sequences(secured):
    def abort_midway(index):
        body = {"model": "main", "messages": [{"role": "user", "content": f"Story {index}"}], "max_tokens": 200,
                "stream": True, "logit_bias": GEMMA_END_TOKENS}
        with httpx.stream("POST", f"{secured.base_url}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"}) as response:
            for count, _ in enumerate(response.iter_lines()):
                if count >= 2 + index % 4:
                    return True  # leaving the block closes the connection mid-stream
        return False

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(abort_midway, range(40)))
    deadline = time.monotonic() + 15
    while _metric(get(secured, "/metrics").text, "llm_active_sequences", model="main") or \
            _metric(get(secured, "/metrics").text, "llm_queue_depth", model="main"):
        assert time.monotonic() < deadline, "sequences leaked after the storm"
        time.sleep(0.1)
    assert client(secured).chat.completions.create(model="main", messages=ASK, max_tokens=3).usage.completion_tokens


def _logged(server, request_id: str) -> dict | None:
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and request_id in line:
            return json.loads(json.loads(line)["message"])
    return None


def test_requests_whose_clients_leave_while_queued_leave_at_once_unevaluated(secured):
    """`other` has one slot: a long stream holds it while six streams wait; their clients give up. They must leave
    the queue at once (not be admitted and generated later), and none of their prompts reaches the engine."""
    metric = lambda name: _metric(get(secured, "/metrics").text, name, model="other")  # noqa: E731
    headers = {"Authorization": f"Bearer {KEY}"}
    # the longest answer the server allows: a fast host makes 300 tokens in the ~3 s the queued clients wait
    holder_body = {"model": "other", "messages": ASK, "max_tokens": 512, "stream": True,
                   "logit_bias": GEMMA_END_TOKENS}
    with httpx.stream("POST", f"{secured.base_url}/v1/chat/completions", json=holder_body, headers=headers,
                      timeout=60) as holder:
        lines = holder.iter_lines()  # kept: a dropped line iterator closes the connection
        next(lines)  # it holds the only slot now

        def give_up(index: int) -> None:
            body = {"model": "other", "messages": [{"role": "user", "content": f"Queued {index}"}], "max_tokens": 50,
                    "stream": True}
            with pytest.raises(httpx.ReadTimeout):  # nothing comes while it waits; the client closes after 1.5 s
                with httpx.stream("POST", f"{secured.base_url}/v1/chat/completions", json=body, timeout=1.5,
                                  headers={**headers, "x-request-id": f"gave-up-{index}"}) as response:
                    response.read()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            waiting = [pool.submit(give_up, index) for index in range(6)]
            deadline = time.monotonic() + 1.4
            while metric("llm_queue_depth") < 6:
                assert time.monotonic() < deadline, "the six requests never queued"
                time.sleep(0.05)
            for future in waiting:
                future.result()
        gone = time.monotonic()
        while metric("llm_queue_depth"):
            assert time.monotonic() - gone < 1.0, "abandoned requests stayed in the queue"
            time.sleep(0.05)
        assert metric("llm_active_sequences") == 1  # only the holder: none of them was admitted
    deadline = time.monotonic() + 5
    while (entries := [_logged(secured, f"gave-up-{index}") for index in range(6)]).count(None):
        assert time.monotonic() < deadline, "the abandoned requests were not logged"
        time.sleep(0.05)
    assert all(entry["prompt_tokens"] == 0 and entry["completion_tokens"] == 0 for entry in entries), entries


def test_sigterm_lets_the_stream_in_flight_finish(tmp_path):
    server = ServerProcess("--parallel", "2", "--n-ctx", "2048", log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        stream = client(server, "x").chat.completions.create(
            model="", messages=ASK, max_tokens=60, stream=True, logit_bias=GEMMA_END_TOKENS)
        first = next(stream)
        server.process.send_signal(signal.SIGTERM)
        chunks = [first, *stream]
        assert chunks[-1].choices[0].finish_reason == "length"  # the answer was not cut by the shutdown
        assert server.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        with pytest.raises(httpx.TransportError):  # and it no longer accepts requests
            httpx.get(f"{server.base_url}/health", timeout=2)
    finally:
        server.stop()


def test_request_timeout_stops_a_long_generation(tmp_path):
    with running_server("--parallel", "1", "--n-ctx", "2048", "--request-timeout", "1",
                        log_dir=tmp_path) as server:
        body = {"messages": ASK, "max_tokens": 1000, "logit_bias": GEMMA_END_TOKENS}
        started = time.monotonic()
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 504 and response.json()["error"]["code"] == "request_timeout"
        assert time.monotonic() - started < 5
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json={**body, "stream": True},
                          timeout=60) as stream:
            if stream.status_code == 504:  # a loaded machine: the timeout came before the first token (no stream yet)
                stream.read()
                events = [stream.json()]
            else:
                events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "request_timeout"
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.base_url}/").json()["active_sequences"]:  # the generation was stopped
            assert time.monotonic() < deadline
            time.sleep(0.05)
