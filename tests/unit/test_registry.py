"""The registry with a stand-in engine: catalog resolution, single loading, LRU eviction that waits for
in-flight requests, memory budget, failures recorded and retried, generation defaults."""

from __future__ import annotations

import asyncio
import struct

import pytest

from backends.base import ChatTemplateInfo, Engine
from backends.catalog import GenerationDefaults
from backends.registry import ModelRegistry
from errors import ModelLoadFailed, ModelNotFound, ModelTooLarge
from settings import Settings

EMPTY_GGUF = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)  # a valid header with no metadata


class StandInEngine(Engine):
    loads: list[str] = []
    fail: set[str] = set()

    def __init__(self, entry, settings):
        if entry.id in StandInEngine.fail:
            raise ValueError("corrupt weights")
        StandInEngine.loads.append(entry.id)
        self.entry = entry
        self.settings = settings
        self.closed = False

    context_length = 128
    chat_template = ChatTemplateInfo(source="{{ messages[0]['content'] }}")

    def count_tokens(self, text):
        return len(text)

    async def generate(self, request):
        yield  # pragma: no cover

    async def aclose(self):
        self.closed = True


def make_registry(tmp_path, **overrides) -> ModelRegistry:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for name in ("a.gguf", "b.gguf", "c.gguf"):
        (models / name).write_bytes(EMPTY_GGUF)
    (models / "notes.txt").write_text("x")
    (tmp_path / "secret.gguf").write_bytes(EMPTY_GGUF)
    (models / "escape.gguf").symlink_to(tmp_path / "secret.gguf")
    (models / "models.yaml").write_text(
        "models:\n"
        "  - id: small\n    path: a.gguf\n    aliases: [tiny]\n    settings: {n_ctx: 512}\n"
        "    defaults: {temperature: 0.1, max_tokens: 7}\n"
        "  - id: remote-model\n    upstream: {name: somewhere, model: m}\n"
    )
    StandInEngine.loads, StandInEngine.fail = [], set()
    settings = Settings(models_dir=models, model_name="a.gguf", scan_hf_cache=False, **overrides)
    return ModelRegistry(settings, StandInEngine)


@pytest.mark.parametrize("name", ["../secret.gguf", "../secret", "/etc/passwd", "notes.txt", "d.gguf", "escape.gguf"])
def test_only_catalog_models_resolve(tmp_path, name):
    with pytest.raises(ModelNotFound):
        make_registry(tmp_path).resolve(name)


def test_file_name_stem_and_alias_resolve(tmp_path):
    registry = make_registry(tmp_path)
    assert registry.resolve("b").id == registry.resolve("b.gguf").id == "b.gguf"
    assert registry.resolve(None).id == registry.resolve("").id == "a.gguf"  # empty means "the default"
    assert registry.resolve("tiny").id == "small"
    assert registry.resolve("small").path == registry.resolve("a").path


def test_catalog_entry_settings_reach_the_engine(tmp_path):
    registry = make_registry(tmp_path)
    model = asyncio.run(registry.ensure_loaded("tiny"))
    assert model.engine.settings.n_ctx == 512 and model.engine.entry.id == "small"


def test_concurrent_requests_share_one_load(tmp_path):
    registry = make_registry(tmp_path)

    async def scenario():
        results = await asyncio.gather(*(registry.ensure_loaded("b") for _ in range(5)))
        assert len({id(r) for r in results}) == 1

    asyncio.run(scenario())
    assert StandInEngine.loads == ["b.gguf"]


def test_least_recently_used_is_evicted_and_a_busy_model_only_after_its_requests(tmp_path):
    registry = make_registry(tmp_path, max_loaded_models=2)

    async def scenario():
        a = await registry.ensure_loaded("a")
        await registry.ensure_loaded("b")
        async with registry.lease("a"):  # a is now the most recently used
            pass
        await registry.ensure_loaded("c")  # evicts b (least recently used)
        assert {m.model_id for m in registry.loaded_models} == {"a.gguf", "c.gguf"}
        async with registry.lease("a"):
            async with registry.lease("c"):
                loading = asyncio.create_task(registry.ensure_loaded("b"))  # both busy: must wait
                await asyncio.sleep(0.05)
                assert not loading.done() and not a.engine.closed
            await asyncio.sleep(0.05)  # c went idle first: it goes, a keeps serving
            assert loading.done() and not a.engine.closed
        assert {m.model_id for m in registry.loaded_models} == {"a.gguf", "b.gguf"}

    asyncio.run(scenario())


def test_memory_budget_bounds_residency(tmp_path):
    registry = make_registry(tmp_path, memory_budget=len(EMPTY_GGUF) * 2)

    async def scenario():
        await registry.ensure_loaded("a")
        await registry.ensure_loaded("b")
        await registry.ensure_loaded("c")
        assert len(registry.loaded_models) == 2
        registry.settings = registry.settings.model_copy(update={"memory_budget": 1})
        with pytest.raises(ModelTooLarge):
            await registry.ensure_loaded("a.gguf" if registry.loaded_model("a.gguf") is None else "b.gguf")

    asyncio.run(scenario())


def test_a_failed_load_is_recorded_then_retried(tmp_path):
    registry = make_registry(tmp_path)
    StandInEngine.fail = {"b.gguf"}

    async def scenario():
        with pytest.raises(ModelLoadFailed):
            await registry.ensure_loaded("b")
        assert registry.status("b.gguf") == ("failed", "ValueError: corrupt weights")
        StandInEngine.fail = set()
        await registry.ensure_loaded("b")
        assert registry.status("b.gguf") == ("loaded", None)

    asyncio.run(scenario())


def test_remote_models_do_not_count_towards_residency(tmp_path):
    registry = make_registry(tmp_path, max_loaded_models=1)

    async def scenario():
        await registry.ensure_loaded("a")
        await registry.ensure_loaded("remote-model")
        assert {m.model_id for m in registry.loaded_models} == {"a.gguf", "remote-model"}
        assert registry.loaded_model("remote-model").memory_bytes == 0

    asyncio.run(scenario())


def test_generation_defaults_layer_runtime_over_catalog(tmp_path):
    registry = make_registry(tmp_path)
    assert registry.generation_defaults("small") == GenerationDefaults(temperature=0.1, max_tokens=7)
    registry.set_generation_defaults("tiny", GenerationDefaults(top_k=5, max_tokens=3))
    assert registry.generation_defaults("small") == GenerationDefaults(temperature=0.1, top_k=5, max_tokens=3)


def test_unload_waits_for_in_flight_requests(tmp_path):
    registry = make_registry(tmp_path)

    async def scenario():
        async with registry.lease("a") as model:
            unloading = asyncio.create_task(registry.unload("a"))
            await asyncio.sleep(0.02)
            assert not unloading.done() and not model.engine.closed
        assert await unloading and model.engine.closed
        assert registry.status("a.gguf") == ("available", None)

    asyncio.run(scenario())


def test_a_failed_load_gives_its_memory_reservation_back(tmp_path):
    registry = make_registry(tmp_path, max_loaded_models=1)
    StandInEngine.fail = {"b.gguf"}

    async def scenario():
        with pytest.raises(ModelLoadFailed):
            await registry.ensure_loaded("b")
        assert registry.memory_in_use() == 0
        await registry.ensure_loaded("a")  # the failed load does not hold the only slot
        assert registry.status("a.gguf") == ("loaded", None)

    asyncio.run(scenario())
