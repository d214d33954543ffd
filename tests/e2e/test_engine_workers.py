"""Each local model runs in a worker process of its own: a worker killed mid-stream (SIGKILL) or aborting natively
(a real `GGML_ASSERT` in llama.cpp: a Qwen3.5 file whose heads are too small for its rope sections, as an odd
conversion makes, built by tests/tiny_hybrids.py) ends its own streams with one `engine_crashed` error event, leaves
the other model's concurrent stream exactly as it is alone, shows on the model's card and in /metrics, and the
model's next request runs on a fresh worker. A worker that hangs instead (stopped with SIGSTOP) is ended by the
watchdog and takes the same path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import GEMMA_END_TOKENS
from tests.server_process import running_server
from tests.smollm2 import NO_END_TOKENS
from tests.tiny_hybrids import qwen35

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"
BROKEN = "broken-qwen35.gguf"  # llama.cpp aborts on its first decode: GGML_ASSERT(sect_dims <= ne0)
ASK = [{"role": "user", "content": "Tell me a long story about owls."}]
STALL_SECONDS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = tmp_path_factory.mktemp("worker-models")
    shutil.copy(qwen35(head_dim=16), models / BROKEN)
    flags = ("--models-dir", str(models), "--model-name", SMOL, "--n-ctx", "2048", "--parallel", "2",
             "--log-level", "info", "--worker-stall-seconds", str(STALL_SECONDS))
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("workers")) as process:
        yield process


def card(server, model: str) -> dict:
    return httpx.get(f"{server.base_url}/v1/models/{model}", timeout=30).json()


def events(server, body: dict):
    """The stream's events, parsed (`[DONE]` as the string)."""
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                yield data if data == "[DONE]" else json.loads(data)


def text_of(server, body: dict, started: threading.Event | None = None) -> str:
    pieces = []
    for event in events(server, body):
        if isinstance(event, dict) and event.get("choices") and event["choices"][0]["delta"].get("content"):
            pieces.append(event["choices"][0]["delta"]["content"])
            if started is not None:
                started.set()
    return "".join(pieces)


def assert_crashed_stream(rest: list) -> None:
    """After the crash: one error event (engine_crashed), then nothing but the end."""
    errors = [e for e in rest if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "engine_crashed", rest
    after = rest[rest.index(errors[0]) + 1:]
    assert after in ([], ["[DONE]"]), rest


def test_a_killed_worker_ends_only_its_own_streams(server):
    gemma = {"model": GEMMA, "messages": ASK, "max_tokens": 40, "temperature": 0, "logit_bias": GEMMA_END_TOKENS}
    alone = text_of(server, gemma)
    old_pid = card(server, SMOL)["worker"]["pid"]
    assert old_pid != card(server, GEMMA)["worker"]["pid"]

    smol = events(server, {"model": SMOL, "messages": ASK, "max_tokens": 900, "logit_bias": NO_END_TOKENS})
    first = [next(smol) for _ in range(3)]  # the role, then text: the worker is generating
    assert all(isinstance(e, dict) and "error" not in e for e in first)
    started, result = threading.Event(), {}
    other = threading.Thread(target=lambda: result.update(text=text_of(server, gemma, started)))
    other.start()
    assert started.wait(60)  # gemma's stream is under way in its own worker
    os.kill(old_pid, signal.SIGKILL)
    assert_crashed_stream(list(smol))
    other.join(120)
    assert result["text"] == alone  # the other model's stream never noticed

    crashed = card(server, SMOL)
    assert crashed["status"] == "failed" and "SIGKILL" in crashed["error"], crashed
    again = server.openai_client().chat.completions.create(model=SMOL, messages=ASK, max_tokens=5)
    assert again.choices[0].finish_reason in ("stop", "length") and again.usage.completion_tokens > 0
    restarted = card(server, SMOL)
    assert restarted["status"] == "loaded" and restarted["crashes"] == 1 and restarted["worker"]["pid"] != old_pid
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert f'llm_engine_crashes_total{{model="{SMOL}"}} 1.0' in metrics


def test_a_native_abort_is_that_models_failure_alone(server):
    gemma = {"model": GEMMA, "messages": ASK, "max_tokens": 40, "temperature": 0, "logit_bias": GEMMA_END_TOKENS}
    alone = text_of(server, gemma)
    started, result = threading.Event(), {}
    other = threading.Thread(target=lambda: result.update(text=text_of(server, gemma, started)))
    other.start()
    assert started.wait(60)
    # Its first decode aborts before any token: the stream had not begun, so the answer is a plain 500
    crash = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=120,
                       json={"model": BROKEN, "messages": ASK, "max_tokens": 20, "stream": True})
    assert crash.status_code == 500 and crash.json()["error"]["code"] == "engine_crashed", crash.text
    other.join(120)
    assert result["text"] == alone  # gemma's worker never noticed
    crashed = card(server, BROKEN)
    assert crashed["status"] == "failed" and "SIGABRT" in crashed["error"], crashed
    assert "GGML_ASSERT" in crashed["error"]  # llama.cpp's own last words, from the worker's log
    assert card(server, GEMMA)["status"] == "loaded" and card(server, SMOL)["status"] == "loaded"

    # It restarts on its next request and crashes again (a whole answer: a 500 engine_crashed) ...
    whole = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": BROKEN, "messages": ASK,
                                                                       "max_tokens": 20}, timeout=120)
    assert whole.status_code == 500 and whole.json()["error"]["code"] == "engine_crashed", whole.text
    # ... then, crashing again and again, it waits longer each time: a 503 with Retry-After until then
    waiting = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": BROKEN, "messages": ASK},
                         timeout=60)
    assert waiting.status_code == 503 and waiting.json()["error"]["code"] == "model_loading"
    assert int(waiting.headers["retry-after"]) >= 1
    assert card(server, BROKEN)["crashes"] == 2
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert f'llm_engine_crashes_total{{model="{BROKEN}"}} 2.0' in metrics


def test_a_hung_worker_is_ended_by_the_watchdog(server):
    crashes = card(server, SMOL).get("crashes", 0)
    pid = card(server, SMOL)["worker"]["pid"]
    smol = events(server, {"model": SMOL, "messages": ASK, "max_tokens": 900, "logit_bias": NO_END_TOKENS})
    assert all(isinstance(next(smol), dict) for _ in range(3))
    os.kill(pid, signal.SIGSTOP)  # alive but frozen: no crash for the socket to show, only silence
    stopped_at = time.monotonic()
    try:
        assert_crashed_stream(list(smol))
    finally:
        waited = time.monotonic() - stopped_at
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # (ended by the watchdog, as it should be)
            pass
    assert STALL_SECONDS <= waited < STALL_SECONDS + 10
    crashed = card(server, SMOL)
    assert crashed["status"] == "failed" and "stopped answering" in crashed["error"], crashed
    again = server.openai_client().chat.completions.create(model=SMOL, messages=ASK, max_tokens=5)
    assert again.usage.completion_tokens > 0 and card(server, SMOL)["crashes"] == crashes + 1
