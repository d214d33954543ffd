"""The registry with a stand-in engine: name resolution, single loading, and retiring a replaced model."""

import asyncio

import pytest

from backends.base import ChatTemplateInfo, Engine
from backends.registry import ModelRegistry
from errors import ModelNotFound


class StandInEngine(Engine):
    loads = 0

    def __init__(self, path):
        StandInEngine.loads += 1
        self.path = path
        self.closed = False

    context_length = 128
    chat_template = ChatTemplateInfo(source="{{ messages[0]['content'] }}")

    def count_tokens(self, text):
        return len(text)

    async def generate(self, request):
        yield  # pragma: no cover

    async def aclose(self):
        self.closed = True


@pytest.fixture()
def registry(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("a.gguf", "b.gguf", "notes.txt"):
        (tmp_path / "models" / name).write_bytes(b"x")
    (tmp_path / "secret.gguf").write_bytes(b"x")
    StandInEngine.loads = 0
    return ModelRegistry(tmp_path / "models", "a.gguf", StandInEngine)


@pytest.mark.parametrize("name", ["../secret.gguf", "../secret", "/etc/passwd", "notes.txt", "c.gguf", "A.GGUF"])
def test_only_listed_gguf_files_resolve(registry, name):
    with pytest.raises(ModelNotFound):
        registry.resolve_id(name)


def test_file_name_or_stem_resolves(registry):
    assert registry.resolve_id("b") == registry.resolve_id("b.gguf") == "b.gguf"
    assert registry.resolve_id(None) == registry.resolve_id("") == "a.gguf"  # empty means "the default"


def test_concurrent_requests_share_one_load(registry):
    async def scenario():
        results = await asyncio.gather(*(registry.ensure_loaded("b") for _ in range(5)))
        assert len({id(r) for r in results}) == 1

    asyncio.run(scenario())
    assert StandInEngine.loads == 1


def test_replaced_model_closes_after_its_last_lease(registry):
    async def scenario():
        async with registry.lease("a") as first:
            await registry.ensure_loaded("b")
            await asyncio.sleep(0.01)
            assert first.retired and not first.engine.closed  # still serving our request
        await asyncio.sleep(0.01)
        assert first.engine.closed
        assert registry.current.model_id == "b.gguf"

    asyncio.run(scenario())
