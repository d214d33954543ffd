"""LoRA adapters on the llama.cpp engine, against the real server and SmolLM2: adapter entries in models.yaml (a
`base` and LoRA GGUFs with scales) are model ids of their own that share the base's loaded weights.

No LoRA file is on PyPI: the test writes random adapters for SmolLM2 with the `gguf` writer (tests/lora_gguf.py).
Random weights make no sense of the text, so the tests assert mechanics: scale 0 is the base exactly, an
adapter changes the logits, an adapter's answer is the same alone and side by side with base requests, cached
prompt states never cross adapter sets (in memory or on disk), and adapters load and unload without the base.
"""

from __future__ import annotations

import re
import threading

import httpx
import pytest
import yaml

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from settings import PROJECT_ROOT
from tests.lora_gguf import build_lora_gguf
from tests.server_process import running_server

BASE = PROJECT_ROOT / "models" / SMOLLM2_FILE
QUESTION = "Name three colours of the rainbow and say one thing about each."
# Long enough to be saved to the disk cache (the server runs with --cache-min-tokens 32).
LONG = ("You are a careful assistant. Answer in one short sentence. " * 6) + "What is the capital of France?"


def _entries(models) -> list[dict]:
    return [
        {"id": "smol", "path": str(BASE)},
        {"id": "smol-lora", "base": "smol", "lora": [{"path": "adapter-a.gguf", "scale": 1.0}]},
        {"id": "smol-lora-zero", "base": "smol", "lora": [{"path": "adapter-a.gguf", "scale": 0.0}]},
        {"id": "smol-lora-ab", "base": "smol", "lora": ["adapter-a.gguf", {"path": "adapter-b.gguf", "scale": 0.5}]},
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-models")
    build_lora_gguf(BASE, folder / "adapter-a.gguf", seed=1)
    build_lora_gguf(BASE, folder / "adapter-b.gguf", seed=2, targets=("attn_k", "ffn_down"))
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": _entries(folder)}))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    # One KV stream per slot: an answer beside other requests must equal the answer alone to the last bit, which a
    # shared cache (the default) does not give (attention also runs over the other requests' masked-out cells, and
    # summing in other groups moves the last bits, enough to flip this random adapter's near ties).
    flags = ("--models-dir", str(models), "--model-name", "smol", "--no-install-embedded-models", "--parallel", "4",
             "--cache-min-tokens", "32", "--no-kv-unified")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("lora-server")) as process:
        yield process


def _chat(server, model: str, content: str = QUESTION, max_tokens: int = 24) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": max_tokens, "logprobs": True, "top_logprobs": 3}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def _tokens(answer: dict) -> list[tuple[str, float]]:
    return [(entry["token"], entry["logprob"]) for entry in answer["choices"][0]["logprobs"]["content"]]


def _cards(server) -> dict[str, dict]:
    return {card["id"]: card for card in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}


def _lora_info(server) -> dict[str, str]:
    """The labels of `vllm:lora_requests_info` for the base (what LoRA-aware routers read)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    (labels,) = [sample.labels for family in text_string_to_metric_families(text) for sample in family.samples
                 if sample.name == "vllm:lora_requests_info" and sample.labels["model_name"] == "smol"]
    return labels


def _admin(server, action: str, model: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/admin/models/{action}", json={"model": model}, timeout=300)


def test_adapter_entries_are_models_and_adapter_files_are_not(server):
    cards = _cards(server)
    assert {"smol", "smol-lora", "smol-lora-zero", "smol-lora-ab"} <= cards.keys()
    assert not any(name.startswith("adapter-") for name in cards)  # LoRA GGUFs are not models of their own
    assert cards["smol-lora-ab"]["base"] == "smol"
    assert cards["smol-lora-ab"]["lora"] == [{"file": "adapter-a.gguf", "scale": 1.0},
                                             {"file": "adapter-b.gguf", "scale": 0.5}]


def test_scale_zero_is_exactly_the_base_and_never_reuses_its_cache(server):
    base = _chat(server, "smol")
    zero = _chat(server, "smol-lora-zero")
    assert _tokens(zero) == _tokens(base)  # same tokens, same logprobs to the last bit
    # The base's KV for this very prompt is in memory, but it belongs to another adapter set.
    assert zero["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_an_adapter_changes_the_logits(server):
    base, adapted = _tokens(_chat(server, "smol")), _tokens(_chat(server, "smol-lora"))
    both = _tokens(_chat(server, "smol-lora-ab"))
    assert base[0] != adapted[0] and adapted[0] != both[0] and base[0] != both[0]


def test_an_adapters_answer_is_the_same_alone_and_beside_base_requests(server):
    alone = [_tokens(_chat(server, model, max_tokens=40)) for model in ("smol-lora", "smol-lora-ab")]
    answers: dict[str, list] = {}

    def ask(name: str, model: str, content: str) -> None:
        answers[name] = _tokens(_chat(server, model, content, max_tokens=40))

    threads = [threading.Thread(target=ask, args=args) for args in [
        ("lora", "smol-lora", QUESTION), ("lora-ab", "smol-lora-ab", QUESTION),
        ("base-1", "smol", "Write a haiku about the sea."), ("base-2", "smol", "Count from one to ten in words."),
    ]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers["lora"] == alone[0] and answers["lora-ab"] == alone[1]
    assert answers["base-1"] != answers["base-2"] and all(answers.values())
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert re.search(r'^llm_requests_total\{.*model="smol-lora-ab".*\} [1-9]', metrics, re.MULTILINE)


def test_prompt_states_on_disk_are_kept_per_adapter_set(server):
    messages = [{"role": "user", "content": LONG}]
    warmed = httpx.post(f"{server.base_url}/restore_cache", json={"model": "smol-lora", "messages": messages},
                        timeout=120).json()
    assert warmed["model"] == "smol-lora" and warmed["cached_tokens"] >= 32
    assert _admin(server, "unload", "smol").json()["unloaded"]  # the base, and so every adapter on it
    assert _cards(server)["smol-lora"]["status"] == "available"
    restored = _chat(server, "smol-lora", LONG, max_tokens=4)  # loads the base again, then the adapter
    assert restored["usage"]["prompt_tokens_details"]["cached_tokens"] == warmed["cached_tokens"]  # from disk
    cache = httpx.get(f"{server.base_url}/cache", params={"model": "smol-lora"}).json()
    assert cache["enabled"] and cache["disk_hits"] == 1
    # The same prompt on the base finds nothing: the state on disk was computed with the adapter.
    assert _chat(server, "smol", LONG, max_tokens=4)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_adapters_load_and_unload_at_run_time_without_the_base(server, models):
    assert _admin(server, "load", "smol").status_code == 200
    loads_before = server.log_path.read_text().count("Loading model smol ")
    entries = _entries(models) + [{"id": "smol-lora-b", "base": "smol", "lora": ["adapter-b.gguf"]}]
    (models / "models.yaml").write_text(yaml.safe_dump({"models": entries}))  # added while serving
    loaded = _admin(server, "load", "smol-lora-b")
    assert loaded.status_code == 200, loaded.text
    assert _cards(server)["smol-lora-b"]["status"] == "loaded"
    assert _chat(server, "smol-lora-b")["choices"][0]["message"]["content"]
    info = _lora_info(server)
    assert info["max_lora"] == "4" and "smol-lora-b" in info["running_lora_adapters"].split(","), info
    unloaded = _admin(server, "unload", "smol-lora-b").json()
    assert unloaded["unloaded"]
    assert "smol-lora-b" not in _lora_info(server)["running_lora_adapters"].split(",")
    cards = _cards(server)
    assert cards["smol-lora-b"]["status"] == "available" and cards["smol"]["status"] == "loaded"
    assert server.log_path.read_text().count("Loading model smol ") == loads_before  # the base never reloaded
    assert _chat(server, "smol")["choices"][0]["message"]["content"]


def test_an_adapter_for_another_model_fails_clearly_and_the_base_keeps_serving(server, models):
    gemma = PROJECT_ROOT / "models" / GEMMA_FILE
    build_lora_gguf(gemma, models / "gemma-adapter.gguf", targets=("attn_q",))
    entries = _entries(models) + [{"id": "smol-wrong", "base": "smol", "lora": ["gemma-adapter.gguf"]}]
    (models / "models.yaml").write_text(yaml.safe_dump({"models": entries}))
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=120,
                          json={"model": "smol-wrong", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500 and response.json()["error"]["code"] == "model_load_failed"
    assert "gemma-adapter.gguf" in response.json()["error"]["message"]
    # llama.cpp's own reason reaches the client and the card (it is only in llama.cpp's log otherwise)
    assert "model arch and LoRA arch mismatch" in response.json()["error"]["message"]
    assert _cards(server)["smol-wrong"]["status"] == "failed"
    assert "model arch and LoRA arch mismatch" in _cards(server)["smol-wrong"]["error"]
    assert _chat(server, "smol")["choices"][0]["message"]["content"]
