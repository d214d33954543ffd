"""Model catalog and management against real servers: several resident models, LRU eviction, loads shared by
concurrent requests, eviction waiting for streams, memory freed on unload, failures, defaults, traversal."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import openai
import pytest
import yaml

from clients.terminal_chat import sse_events
from settings import PROJECT_ROOT
from tests.e2e.conftest import GEMMA_END_TOKENS
from tests.server_process import running_server

GEMMA = str(PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf")
ASK = [{"role": "user", "content": "Tell me about owls."}]


def write_catalog(models_dir, entries) -> None:
    models_dir.mkdir(exist_ok=True)
    (models_dir / "models.yaml").write_text(yaml.safe_dump({"models": entries}))


def client_for(server) -> openai.OpenAI:
    return server.openai_client()


def cards(server) -> dict[str, dict]:
    return {card["id"]: card for card in httpx.get(f"{server.base_url}/v1/models").json()["data"]}


def loads_logged(server, model_id: str) -> int:
    return server.log_path.read_text(errors="replace").count(f"Loading model {model_id} ")


@pytest.fixture(scope="module")
def catalog_server(tmp_path_factory):
    models = tmp_path_factory.mktemp("catalog-models")
    write_catalog(models, [
        {"id": "gemma-a", "path": GEMMA, "aliases": ["a"], "settings": {"n_ctx": 1024, "parallel": 1}},
        {"id": "gemma-b", "path": GEMMA, "settings": {"n_ctx": 2048, "parallel": 2, "repack": "auto"}},
        {"id": "gemma-c", "path": GEMMA, "settings": {"n_ctx": 1024, "parallel": 1}},
        {"id": "remote-orphan", "upstream": {"name": "nowhere", "model": "x"}},
        {"id": "hf-missing", "engine": "transformers", "repo": "org/not-here"},
    ])
    (models / "broken.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # header of garbage
    flags = ("--models-dir", str(models), "--model-name", "gemma-a", "--no-install-embedded-models",
             "--max-loaded-models", "2", "--repack", "off")  # gemma-b's own setting says auto
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("catalog-server")) as server:
        yield server


def test_catalog_lists_entries_with_status_engine_and_aliases(catalog_server):
    listed = cards(catalog_server)
    assert {"gemma-a", "gemma-b", "gemma-c", "remote-orphan", "hf-missing", "broken.gguf"} <= listed.keys()
    assert listed["gemma-a"]["status"] == "loaded" and listed["gemma-a"]["aliases"] == ["a"]
    assert listed["remote-orphan"]["engine"] == "remote" and listed["remote-orphan"]["status"] == "available"
    assert listed["hf-missing"]["engine"] == "transformers"
    assert listed["broken.gguf"]["engine"] == "llama.cpp"


def test_weight_placement_follows_the_flag_and_the_per_model_setting_and_is_shown(catalog_server):
    client_for(catalog_server).chat.completions.create(model="gemma-b", messages=ASK, max_tokens=2)
    listed = cards(catalog_server)
    off, auto = listed["gemma-a"]["weights"], listed["gemma-b"]["weights"]
    assert off["repack"] == "off" and off["extra_buffer_types"] == [] and "CPU_REPACK" not in off["buffers"]
    # auto keeps llama.cpp's CPU repacking (gemma's Q4_K layers on AVX2 / AVX-512 hosts), never AMX
    assert auto["repack"] == "auto" and "CPU_REPACK" in auto["extra_buffer_types"] and auto["buffers"]["CPU_REPACK"] > 0
    assert "AMX" not in auto["extra_buffer_types"] and "AMX" not in auto["buffers"]
    log = catalog_server.log_path.read_text(errors="replace")
    assert "gemma-3-270m-q4_k_m.gguf: repack=off (extra buffer types offered: none); weights in CPU_Mapped" in log
    assert "repack=auto (extra buffer types offered: CPU_REPACK" in log
    assert "llama.cpp CPU backend: " in log and "extra buffer types: " in log


def test_requests_interleave_across_resident_models_with_their_own_settings(catalog_server):
    client = client_for(catalog_server)
    for model in ("gemma-a", "gemma-b", "a", "gemma-b"):
        response = client.chat.completions.create(model=model, messages=ASK, max_tokens=3)
        assert response.model == ("gemma-a" if model == "a" else model)
    listed = cards(catalog_server)
    assert listed["gemma-a"]["status"] == listed["gemma-b"]["status"] == "loaded"
    assert listed["gemma-a"]["context_length"] == 1024 and listed["gemma-b"]["context_length"] == 1024  # 2048 / 2


def test_least_recently_used_model_is_evicted(catalog_server):
    client = client_for(catalog_server)
    client.chat.completions.create(model="gemma-b", messages=ASK, max_tokens=1)
    client.chat.completions.create(model="gemma-a", messages=ASK, max_tokens=1)  # b is now least recent
    client.chat.completions.create(model="gemma-c", messages=ASK, max_tokens=1)
    statuses = {k: v["status"] for k, v in cards(catalog_server).items()}
    assert statuses["gemma-a"] == statuses["gemma-c"] == "loaded" and statuses["gemma-b"] == "available"


def test_concurrent_requests_during_a_load_share_it(catalog_server):
    httpx.post(f"{catalog_server.base_url}/admin/models/unload", json={"model": "gemma-b"}, timeout=60)
    before = loads_logged(catalog_server, "gemma-b")
    client = client_for(catalog_server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(
            lambda _: client.chat.completions.create(model="gemma-b", messages=ASK, max_tokens=2), range(4)))
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in responses)
    assert loads_logged(catalog_server, "gemma-b") == before + 1


def test_unload_frees_memory(catalog_server):
    client_for(catalog_server).chat.completions.create(model="gemma-c", messages=ASK, max_tokens=1)
    result = httpx.post(f"{catalog_server.base_url}/admin/models/unload", json={"model": "gemma-c"}, timeout=60).json()
    freed = result["rss_bytes_before"] - result["rss_bytes_after"]
    print(f"\n[unload] RSS {result['rss_bytes_before'] / 2**20:.0f} MiB -> {result['rss_bytes_after'] / 2**20:.0f} MiB")
    assert result["unloaded"] and freed > 100 * 2**20  # weights are ~240 MiB
    assert cards(catalog_server)["gemma-c"]["status"] == "available"


def test_corrupt_model_fails_clearly_and_others_keep_serving(catalog_server):
    with pytest.raises(openai.InternalServerError) as failure:
        client_for(catalog_server).chat.completions.create(model="broken", messages=ASK, max_tokens=1)
    assert failure.value.body["code"] == "model_load_failed"
    card = cards(catalog_server)["broken.gguf"]
    assert card["status"] == "failed" and card["error"]
    assert client_for(catalog_server).chat.completions.create(model="gemma-a", messages=ASK, max_tokens=1).choices


def test_a_remote_entry_naming_an_unknown_upstream_is_404(catalog_server):
    response = httpx.post(f"{catalog_server.base_url}/v1/chat/completions", json={"model": "remote-orphan", "messages": ASK})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_a_hugging_face_model_missing_from_disk_is_404_without_a_download(catalog_server):
    response = httpx.post(f"{catalog_server.base_url}/v1/chat/completions", json={"model": "hf-missing", "messages": ASK},
                          timeout=60)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_generation_defaults_put_then_applied_and_overridden_by_requests(catalog_server):
    url = f"{catalog_server.base_url}/admin/models/gemma-a/defaults"
    assert httpx.put(url, json={"max_tokens": 3, "temperature": 0}).json()["defaults"] == {"max_tokens": 3, "temperature": 0.0}
    client = client_for(catalog_server)
    kwargs = dict(model="gemma-a", messages=ASK, logit_bias=GEMMA_END_TOKENS)
    assert client.chat.completions.create(**kwargs).usage.completion_tokens == 3
    assert client.chat.completions.create(**kwargs, max_tokens=5).usage.completion_tokens == 5
    assert httpx.get(url).json()["defaults"]["max_tokens"] == 3
    bad = httpx.put(url, json={"temperature": 9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    httpx.put(url, json={})


@pytest.mark.parametrize("name", ["../gemma-3-270m-q4_k_m.gguf", "/etc/passwd", "..", "models.yaml", "gemma-a/../x"])
def test_model_names_never_escape_the_catalog(catalog_server, name):
    response = httpx.post(f"{catalog_server.base_url}/v1/chat/completions", json={"model": name, "messages": ASK})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_set_model_without_waiting_answers_202_and_shows_progress(catalog_server):
    response = httpx.post(f"{catalog_server.base_url}/setModel", json={"modelName": "gemma-c", "wait": False})
    assert response.status_code == 202 and response.json()["model_status"] in ("loading", "loaded")
    deadline = time.monotonic() + 60
    while cards(catalog_server)["gemma-c"]["status"] != "loaded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert httpx.get(f"{catalog_server.base_url}/").json()["default_model"] == "gemma-c"
    httpx.post(f"{catalog_server.base_url}/setModel", json={"modelName": "gemma-a"})


def _load_events(server, model: str) -> list[tuple[str, dict]]:
    """`POST /admin/models/load` streamed: (event name, data) pairs, as a client reads them."""
    with httpx.stream("POST", f"{server.base_url}/admin/models/load", json={"model": model, "stream": True},
                      timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


def test_a_load_streams_its_progress_and_the_catalog_shows_it(catalog_server):
    httpx.post(f"{catalog_server.base_url}/admin/models/unload", json={"model": "gemma-b"}, timeout=60)
    seen_in_catalog: list[dict] = []
    stop = threading.Event()

    def watch_catalog() -> None:
        while not stop.is_set():
            if loading := cards(catalog_server)["gemma-b"].get("loading"):
                seen_in_catalog.append(loading)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_catalog)
    watcher.start()
    try:
        events = _load_events(catalog_server, "gemma-b")
    finally:
        stop.set()
        watcher.join()
    progress = [data["progress"] for name, data in events if name == "progress"]
    assert progress == sorted(progress) and len(progress) >= 3  # llama.cpp reports as it reads the tensors
    assert any(0 < value < 1 for value in progress)
    assert {data["stage"] for name, data in events if name == "progress"} >= {"weights"}
    assert events[-1][0] == "loaded" and events[-1][1]["model_status"] == "loaded"
    assert seen_in_catalog and all(0 <= entry["progress"] <= 1 for entry in seen_in_catalog)
    assert "loading" not in cards(catalog_server)["gemma-b"]  # only while it loads


def test_a_streamed_load_that_fails_ends_with_an_error_event(catalog_server):
    events = _load_events(catalog_server, "broken.gguf")
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "model_load_failed"
    missing = httpx.post(f"{catalog_server.base_url}/admin/models/load", json={"model": "nope", "stream": True})
    assert missing.status_code == 404  # before any stream starts


def test_eviction_waits_for_the_stream_in_flight(tmp_path):
    models = tmp_path / "models"
    write_catalog(models, [{"id": "one", "path": GEMMA, "settings": {"n_ctx": 1024, "parallel": 1}},
                           {"id": "two", "path": GEMMA, "settings": {"n_ctx": 1024, "parallel": 1}}])
    flags = ("--models-dir", str(models), "--model-name", "one", "--no-install-embedded-models",
             "--max-loaded-models", "1")
    with running_server(*flags, log_dir=tmp_path) as server:
        client = client_for(server)
        stream = client.chat.completions.create(model="one", messages=ASK, max_tokens=60, stream=True,
                                                logit_bias=GEMMA_END_TOKENS)
        first = next(stream)  # the stream is running on "one"
        (held,) = httpx.get(server.base_url).json()["loaded_models"]
        assert held["model"] == "one" and held["in_flight"] == 1  # the stream holds its lease until it ends
        done: dict[str, float] = {}

        def ask_two():
            client.chat.completions.create(model="two", messages=ASK, max_tokens=1)
            done["two"] = time.monotonic()

        other = threading.Thread(target=ask_two)
        other.start()
        chunks = [first, *stream]
        done["one"] = time.monotonic()
        other.join(60)
        assert chunks[-1].choices[0].finish_reason == "length"  # the stream ran to the end, uncut
        assert done["one"] < done["two"]  # "two" loaded only after "one" finished and was unloaded
        assert {k: v["status"] for k, v in cards(server).items()} == {"one": "available", "two": "loaded"}
