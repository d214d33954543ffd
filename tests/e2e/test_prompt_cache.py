"""Persistent prompt cache end to end: /restore_cache, restore from disk after a restart, corrupt entries,
per-model namespaces. Each test runs its own servers on its own cache directory. Restoring runs on both embedded
architectures: SmolLM2 (llama, full attention: a cached sequence can be cut back to a shared prefix) and gemma 3
(sliding-window attention: only whole stored prefixes are usable)."""

from __future__ import annotations

import httpx
import pytest
import yaml

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from settings import PROJECT_ROOT
from tests.server_process import running_server

MODEL = GEMMA_FILE
FLAGS = ("--parallel", "2", "--n-ctx", "4096", "--cache-min-tokens", "64")
CONVERSATION = [
    {"role": "system", "content": "You keep the harbour log. " + " ".join(
        f"Entry {i}: the ferry left at {i % 12 + 1} o'clock and the lamp was trimmed." for i in range(30))},
    {"role": "user", "content": "When did the ferry leave in entry 4?"},
    {"role": "assistant", "content": "At 5 o'clock."},
]
FOLLOW_UP = CONVERSATION + [{"role": "user", "content": "And in entry 9?"}]


def chat(server, messages, model=MODEL):
    client = server.openai_client()
    return client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)


def cache_status(server, model: str | None = None) -> dict:
    return httpx.get(f"{server.base_url}/cache", params={"model": model} if model else {}).json()


def restore(server, messages) -> httpx.Response:
    return httpx.post(f"{server.base_url}/restore_cache", json={"messages": messages}, timeout=120)


@pytest.fixture()
def cache_dir(tmp_path):
    return tmp_path / "prompt-cache"


@pytest.fixture(params=[SMOLLM2_FILE, GEMMA_FILE], ids=["llama", "gemma3-swa"])
def model(request) -> str:
    return request.param


def test_restore_then_follow_up_reuses_the_conversation_and_answers_the_same(tmp_path, cache_dir, model):
    with running_server(*FLAGS, "--model-name", model, "--no-prompt-cache", log_dir=tmp_path) as server:
        cold = chat(server, FOLLOW_UP, model)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    with running_server(*FLAGS, "--model-name", model, "--cache-dir", str(cache_dir), log_dir=tmp_path) as server:
        warmed = restore(server, CONVERSATION).json()
        assert warmed["model"] == model and warmed["reused_tokens"] == 0
        assert 0 < warmed["cached_tokens"] <= warmed["prompt_tokens"] < cold.usage.prompt_tokens
        warm = chat(server, FOLLOW_UP, model)
    assert warm.usage.prompt_tokens == cold.usage.prompt_tokens
    assert warm.usage.prompt_tokens_details.cached_tokens >= warmed["cached_tokens"]
    assert warm.choices[0].message.content == cold.choices[0].message.content


def test_a_restart_restores_from_disk(tmp_path, cache_dir, model):
    flags = (*FLAGS, "--model-name", model, "--cache-dir", str(cache_dir))
    with running_server(*flags, log_dir=tmp_path) as server:
        first = chat(server, FOLLOW_UP, model)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    next_turn = FOLLOW_UP + [{"role": "assistant", "content": first.choices[0].message.content},
                             {"role": "user", "content": "And in entry 11?"}]
    with running_server(*flags, log_dir=tmp_path) as server:
        # The identical prompt: all but its last token comes from disk (that one is evaluated for its logits).
        again = chat(server, FOLLOW_UP, model)
        assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1
        assert cache_status(server)["disk_hits"] == 1
    assert again.choices[0].message.content == first.choices[0].message.content
    with running_server(*flags, log_dir=tmp_path) as server:
        # The next turn continues the first answer's whole sequence (prompt + completion, saved after it).
        follow_up = chat(server, next_turn, model)
        status = cache_status(server)
    assert follow_up.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens
    assert status["disk_hits"] == 1 and status["disk_misses"] == 0


def test_corrupt_entries_are_served_cold_without_a_crash(tmp_path, cache_dir, model):
    flags = (*FLAGS, "--model-name", model, "--cache-dir", str(cache_dir))
    with running_server(*flags, log_dir=tmp_path) as server:
        assert restore(server, CONVERSATION).status_code == 200
    value_files = list(cache_dir.rglob("*.val"))
    assert value_files
    for path in value_files:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with running_server(*flags, log_dir=tmp_path) as server:
        response = chat(server, FOLLOW_UP, model)
        status = cache_status(server)
        assert response.usage.prompt_tokens_details.cached_tokens == 0
        assert status["bad_entries"] >= 1 and status["disk_hits"] == 0
        assert chat(server, FOLLOW_UP, model).choices[0].finish_reason in ("stop", "length")  # still serving


def test_two_models_never_restore_each_others_states(tmp_path, cache_dir):
    models = tmp_path / "models"
    models.mkdir()
    gemma = str(PROJECT_ROOT / "models" / MODEL)
    # Two catalog entries of the same weights: only the per-model namespace keeps their states apart.
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [{"id": "first", "path": gemma},
                                                                   {"id": "second", "path": gemma}]}))
    flags = (*FLAGS, "--models-dir", str(models), "--model-name", "first", "--no-install-embedded-models",
             "--cache-dir", str(cache_dir))
    with running_server(*flags, log_dir=tmp_path) as server:
        assert restore(server, CONVERSATION).status_code == 200
        first_dir = cache_status(server, "first")["directory"]
    with running_server(*flags, log_dir=tmp_path) as server:
        other = chat(server, FOLLOW_UP, model="second")
        status = cache_status(server, "second")
    assert other.usage.prompt_tokens_details.cached_tokens == 0
    assert status["model"] == "second" and status["directory"] != first_dir and status["disk_hits"] == 0


def test_restore_cache_is_501_without_a_prompt_cache_and_400_for_bad_input(tmp_path):
    with running_server(*FLAGS, "--no-prompt-cache", log_dir=tmp_path) as server:
        response = restore(server, CONVERSATION)
        assert response.status_code == 501
        assert response.json()["error"]["code"] == "not_implemented"
        bad = httpx.post(f"{server.base_url}/restore_cache", json={"messages": []}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        unknown = httpx.post(f"{server.base_url}/restore_cache", json={"model": "nope", "messages": CONVERSATION})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
