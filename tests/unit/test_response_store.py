"""The response store: chains oldest first, keys kept apart, versioned schema, clear errors for bad files."""

import asyncio

import pytest

from api.response_store import MIGRATIONS, ResponseStore, StoreUnavailable
from errors import ResponseNotFound


def response(rid, previous=None, text="hi"):
    return {"id": rid, "previous_response_id": previous,
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]}


def test_a_chain_comes_back_oldest_first_with_outputs_as_assistant_turns(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite3")
    store.save_now(response("r1", text="one"), [{"id": "m1", "role": "user", "content": "a"}], "alice")
    store.save_now(response("r2", "r1", text="two"), [{"id": "m2", "role": "user", "content": "b"}], "alice")
    items = asyncio.run(store.conversation("r2", "alice"))
    assert [i.get("content") if i.get("role") == "user" else i["content"][0]["text"] for i in items] == \
        ["a", "one", "b", "two"]
    with pytest.raises(ResponseNotFound):
        asyncio.run(store.conversation("r2", "bob"))  # another key's
    asyncio.run(store.delete("r1", "alice"))
    with pytest.raises(ResponseNotFound):
        asyncio.run(store.conversation("r2", "alice"))  # the chain is broken: said, not silently shortened


def test_the_schema_is_versioned_and_a_newer_or_broken_file_is_refused(tmp_path):
    path = tmp_path / "r.sqlite3"
    store = ResponseStore(path)
    assert store._db.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    store._db.execute("UPDATE schema_version SET version = 99")
    store.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        ResponseStore(path)
    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreUnavailable, match="cannot be used"):
        ResponseStore(broken)


def test_an_unusable_default_location_falls_back_to_memory_but_a_configured_one_is_an_error(tmp_path):
    (tmp_path / "cache-is-a-file").write_text("x")
    store = ResponseStore.open(None, tmp_path / "cache-is-a-file" / "responses.sqlite3")
    assert store.path is None  # in memory: the server still answers and continues conversations until it stops
    store.save_now(response("r1"), [], "alice")
    assert asyncio.run(store.load("r1", "alice"))[0]["id"] == "r1"
    with pytest.raises(StoreUnavailable):
        ResponseStore.open(tmp_path / "cache-is-a-file" / "responses.sqlite3", tmp_path / "unused.sqlite3")
