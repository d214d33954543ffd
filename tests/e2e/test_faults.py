"""Faults while serving: a model file deleted under a loaded model, a hostile chat template, an unusable
cache directory, an upstream killed mid-stream. Each gets a clear error or a cold serve; everything else
keeps working."""

from __future__ import annotations

import json
import shutil
import signal
import time

import httpx
import pytest

from settings import PROJECT_ROOT
from tests.server_process import ServerProcess, running_server

GEMMA = PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
ASK = [{"role": "user", "content": "Tell me about owls."}]
ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def chat(server, model, **extra):
    body = {"model": model, "messages": ASK, "max_tokens": 3, **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    models = tmp_path_factory.mktemp("fault-models")
    shutil.copy(GEMMA, models / "main.gguf")
    shutil.copy(GEMMA, models / "victim.gguf")
    (models / "hostile.gguf").hardlink_to(models / "main.gguf")
    (models / "hostile.jinja").write_text(ESCAPE)  # a chat template trying to reach Python internals
    not_a_dir = models / "cache-is-a-file"
    not_a_dir.write_text("x")
    flags = ("--models-dir", str(models), "--model-name", "main.gguf", "--no-install-embedded-models",
             "--cache-dir", str(not_a_dir), "--cache-min-tokens", "1", "--n-ctx", "2048", "--parallel", "2")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("fault-server")) as server:
        yield server, models


def test_a_hostile_template_is_refused_and_never_executes(faulty):
    server, _ = faulty
    response = chat(server, "hostile")
    assert response.status_code == 400 and "unsafe" in response.json()["error"]["message"]
    assert chat(server, "main").status_code == 200


def test_an_unusable_cache_dir_serves_cold(faulty):
    server, _ = faulty
    first, second = chat(server, "main", temperature=0), chat(server, "main", temperature=0)
    assert first.status_code == second.status_code == 200
    status = httpx.get(f"{server.base_url}/cache", params={"model": "main"}).json()
    assert status["enabled"] is False  # logged at start-up, the server runs without it
    assert "Prompt cache disabled" in server.log_path.read_text(errors="replace")


def test_a_model_file_deleted_while_loaded(faulty):
    server, models = faulty
    assert chat(server, "victim").status_code == 200
    (models / "victim.gguf").unlink()
    assert chat(server, "victim").status_code == 200  # the loaded weights stay mapped: it keeps serving
    httpx.post(f"{server.base_url}/admin/models/unload", json={"model": "victim.gguf"}, timeout=60)
    gone = chat(server, "victim")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert chat(server, "main").status_code == 200


def test_an_upstream_killed_mid_stream(server, tmp_path):
    upstream = ServerProcess("--parallel", "1", "--n-ctx", "1024", log_path=tmp_path / "upstream.log")
    try:
        upstream.wait_ready()
        with running_server("--upstream", f"up={upstream.base_url}/v1", "--n-ctx", "1024", "--parallel", "1",
                            log_dir=tmp_path) as proxy:
            deadline = time.monotonic() + 20
            while "up/gemma" not in httpx.get(f"{proxy.base_url}/v1/models").text:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            body = {"model": "up/gemma-3-270m-q4_k_m.gguf", "messages": ASK, "max_tokens": 400, "stream": True,
                    "logit_bias": {"1": -100, "106": -100}}
            events = []
            with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        events.append(json.loads(line[6:]))
                        if len(events) == 3:
                            upstream.process.send_signal(signal.SIGKILL)
            assert "error" in events[-1] and events[-1]["error"]["type"] == "upstream_error"
            assert all("error" not in event for event in events[:-1])
            local = httpx.post(f"{proxy.base_url}/v1/chat/completions", json={"messages": ASK, "max_tokens": 2},
                               timeout=60)
            assert local.status_code == 200  # the proxy's own model never noticed
    finally:
        upstream.stop()
