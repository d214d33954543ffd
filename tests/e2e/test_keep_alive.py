"""Keep-alive end to end: a request's `keep_alive` (0 = unload after it), a model's `ttl` in models.yaml, shown in
/v1/models, and never an unload while a request is in flight."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from backends.embedded_model import SMOLLM2_FILE
from settings import PROJECT_ROOT
from tests.server_process import running_server
from tests.smollm2 import NO_END_TOKENS

ASK = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keep-alive")
    path = str(PROJECT_ROOT / "models" / SMOLLM2_FILE)
    small = {"n_ctx": 1024, "parallel": 1}
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "brief", "path": path, "ttl": "2s", "settings": small},
        {"id": "lasting", "path": path, "settings": small},
    ]}))
    flags = ("--models-file", str(folder / "models.yaml"), "--model-name", "lasting", "--max-loaded-models", "3")
    with running_server(*flags, log_dir=folder) as process:
        yield process


def card(server, model_id: str) -> dict:
    return httpx.get(f"{server.base_url}/v1/models/{model_id}").json()


def wait_for_status(server, model_id: str, status: str, timeout: float) -> float:
    start = time.monotonic()
    while card(server, model_id)["status"] != status:
        assert time.monotonic() - start < timeout, card(server, model_id)
        time.sleep(0.1)
    return time.monotonic() - start


def chat(server, model: str, **fields) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": ASK, "max_tokens": 4, **fields})


def test_a_model_ttl_unloads_it_once_idle_and_the_card_says_when(server):
    assert chat(server, "brief").status_code == 200
    loaded = card(server, "brief")
    assert loaded["status"] == "loaded" and loaded["keep_alive_seconds"] == 2.0 and loaded["expires_at"]
    assert wait_for_status(server, "brief", "available", timeout=10) > 0.5
    assert card(server, "lasting")["status"] == "loaded"  # no ttl: it stays


def test_keep_alive_zero_unloads_after_this_request_and_a_duration_renews(server):
    assert chat(server, "lasting", keep_alive="1h").status_code == 200
    assert card(server, "lasting")["keep_alive_seconds"] == 3600.0
    assert chat(server, "lasting", keep_alive=0).status_code == 200
    wait_for_status(server, "lasting", "available", timeout=5)
    assert chat(server, "lasting", keep_alive="forever").status_code == 400


def test_a_streaming_request_is_never_cut_by_its_own_keep_alive(server):
    body = {"model": "brief", "messages": ASK, "max_tokens": 48, "stream": True, "keep_alive": 0,
            "logit_bias": NO_END_TOKENS}  # no end token: all 48 tokens
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"finish_reason":"length"' in lines[-2].replace(" ", "")
    wait_for_status(server, "brief", "available", timeout=5)
