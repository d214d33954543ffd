"""The response store, on SQLite and on a real PostgreSQL: chains oldest first, keys kept apart, versioned schema,
clear errors for bad databases, and unfinished background responses failed only when their instance is gone."""

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from errors import ResponseNotFound
from state import instance_liveness
from state.response_store import MIGRATIONS, ResponseStore, StoreUnavailable


def response(rid, previous=None, text="hi", status="completed"):
    return {"id": rid, "previous_response_id": previous, "status": status,
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]}


def saved(store: ResponseStore, response: dict, items: list, tenant: str) -> None:
    store.save(response, items, tenant)
    store.flush()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a store lives: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "r.sqlite3")
    return request.getfixturevalue("fresh_postgres")


def test_a_chain_comes_back_oldest_first_with_outputs_as_assistant_turns(target):
    store = ResponseStore(target)
    saved(store, response("r1", text="one"), [{"id": "m1", "role": "user", "content": "a"}], "alice")
    saved(store, response("r2", "r1", text="two"), [{"id": "m2", "role": "user", "content": "b"}], "alice")
    items = asyncio.run(store.conversation("r2", "alice"))
    assert [i.get("content") if i.get("role") == "user" else i["content"][0]["text"] for i in items] == \
        ["a", "one", "b", "two"]
    with pytest.raises(ResponseNotFound):
        asyncio.run(store.conversation("r2", "bob"))  # another key's
    asyncio.run(store.delete("r1", "alice"))
    with pytest.raises(ResponseNotFound):
        asyncio.run(store.conversation("r2", "alice"))  # the chain is broken: said, not silently shortened
    store.close()


def test_the_schema_is_versioned_and_a_newer_database_is_refused(target):
    store = ResponseStore(target)
    assert store.db.query("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    store.db.change("UPDATE schema_version SET version = 99")
    store.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        ResponseStore(target)


def test_a_store_from_the_first_schema_is_migrated_with_its_rows(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:2]:  # what the first release wrote
        old.execute(step)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_version VALUES (2)")
    old.execute("INSERT INTO responses VALUES ('r1', 'alice', 0, NULL, ?, '[]')",
                ('{"id": "r1", "status": "in_progress", "output": []}',))
    old.close()
    store = ResponseStore(path)
    assert store.fail_orphans() == 1  # nobody owns it any more
    assert asyncio.run(store.load("r1", "alice"))[0]["status"] == "failed"


def test_a_broken_file_or_unreachable_server_is_a_clear_error_without_the_password(tmp_path, postgres_url):
    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreUnavailable, match="cannot be used"):
        ResponseStore(str(broken))
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(StoreUnavailable, match="cannot be used") as raised:
        ResponseStore(f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/no_such_database")
    assert "s3cret-pw" not in str(raised.value) and "***" in str(raised.value)


def test_an_unusable_default_location_falls_back_to_memory_but_a_configured_one_is_an_error(tmp_path):
    (tmp_path / "cache-is-a-file").write_text("x")
    store = ResponseStore.open(None, tmp_path / "cache-is-a-file" / "responses.sqlite3")
    assert store.in_memory  # the server still answers and continues conversations until it stops
    saved(store, response("r1"), [], "alice")
    assert asyncio.run(store.load("r1", "alice"))[0]["id"] == "r1"
    with pytest.raises(StoreUnavailable):
        ResponseStore.open(str(tmp_path / "cache-is-a-file" / "responses.sqlite3"), tmp_path / "unused.sqlite3")


def test_unfinished_responses_fail_only_when_their_instance_is_gone(target, monkeypatch):
    live = ResponseStore(target)  # an instance on another host, still generating
    saved(live, response("running", status="in_progress"), [], "alice")
    live.db.change("UPDATE instances SET host = 'elsewhere' WHERE id = ?", (live.liveness.instance,))
    crashed = ResponseStore(target)  # an instance killed mid-generation (its process is gone)
    saved(crashed, response("cut", status="in_progress"), [], "alice")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    crashed.db.change("UPDATE instances SET pid = ? WHERE id = ?", (int(dead.stdout), crashed.liveness.instance))
    stale = ResponseStore(target)  # an instance on another host that stopped sending heartbeats
    saved(stale, response("silent", status="queued"), [], "alice")
    stale.db.change("UPDATE instances SET host = 'elsewhere', heartbeat = heartbeat - ? WHERE id = ?",
                    (instance_liveness.STALE_SECONDS + 1, stale.liveness.instance))
    starting = ResponseStore(target)
    assert starting.fail_orphans() == 2
    statuses = {rid: asyncio.run(starting.load(rid, "alice"))[0]["status"] for rid in ("running", "cut", "silent")}
    assert statuses == {"running": "in_progress", "cut": "failed", "silent": "failed"}
    saved(live, response("running"), [], "alice")  # it finishes normally afterwards
    assert asyncio.run(starting.load("running", "alice"))[0]["status"] == "completed"
    for store in (live, crashed, stale, starting):
        store.close()


def test_a_save_returns_at_once_and_a_read_waits_for_it(tmp_path, monkeypatch):
    """Saves ran on the event loop: with PostgreSQL each was a network round trip holding up every stream."""
    store = ResponseStore(str(tmp_path / "r.sqlite3"))
    gate = threading.Event()
    write = store._save
    monkeypatch.setattr(store, "_save", lambda *args: (gate.wait(10), write(*args)))

    async def scenario() -> float:
        started = time.monotonic()
        store.save(response("r1"), [], "alice")
        returned = time.monotonic() - started
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, gate.set)  # the database answers later
        assert (await store.load("r1", "alice"))[0]["id"] == "r1"  # waited for the pending write
        return returned

    assert asyncio.run(scenario()) < 0.1
    store.close()
