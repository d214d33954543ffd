"""Stored Responses: each stored response with the input items it answered, keyed by the tenant that made it
(another key never sees it), in SQLite (`cache/responses.sqlite3`, WAL, so a crash never leaves a half-written
row) or PostgreSQL (state/database.py).

Schema migrations are versioned (`schema_version`) and applied in one transaction; a database newer than this code,
or not a database at all, is a clear error at start. Reads are done off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from errors import ResponseNotFound
from settings import Settings
from state.database import StoreUnavailable, open_database
from state.instance_liveness import Liveness
from state.ordered_writes import OrderedWrites

__all__ = ["MIGRATIONS", "ResponseStore", "StoreUnavailable"]

MIGRATIONS: list[str | dict[str, str]] = [  # a step is portable SQL, or one statement per dialect
    """CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        previous_response_id TEXT,
        response TEXT NOT NULL,      -- the response object, as answered
        input_items TEXT NOT NULL    -- the input items it answered (this turn's only)
    )""",
    "CREATE INDEX responses_previous ON responses (previous_response_id)",
    # 3-7: background responses belong to the instance running them, so a server that stops mid-generation has its
    # rows failed by whichever instance notices first, and a live instance's are never touched
    "ALTER TABLE responses ADD COLUMN status TEXT",
    "ALTER TABLE responses ADD COLUMN owner TEXT",
    {"sqlite": "UPDATE responses SET status = json_extract(response, '$.status')",
     "postgresql": "UPDATE responses SET status = response::json->>'status'"},
    "CREATE INDEX responses_status ON responses (status)",
    """CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        heartbeat DOUBLE PRECISION NOT NULL
    )""",
    # 9: the web page's conversations (state/page_conversations.py), per tenant, the page's own JSON
    """CREATE TABLE page_conversations (
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        title TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (tenant, id)
    )""",
    # 10-12: the Conversations API (state/conversation_store.py): conversations and their items in order
    """CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        metadata TEXT NOT NULL
    )""",
    """CREATE TABLE conversation_items (
        conversation_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        id TEXT NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (conversation_id, position)
    )""",
    "CREATE INDEX conversation_items_id ON conversation_items (conversation_id, id)",
]
UNFINISHED = ("queued", "in_progress")
logger = logging.getLogger(__name__)
MAX_CHAIN = 1000  # previous_response_id links followed at most (a loop in stored data must not hang a request)


class ResponseStore:
    def __init__(self, target: str | Path | None) -> None:
        """`target`: a SQLite file, a PostgreSQL URL, or None (in memory, kept for this process only)."""
        self.db = open_database(target)
        self.in_memory = target is None
        self.liveness = Liveness(self.db)
        try:
            self._migrate()
        except StoreUnavailable:
            self.db.close()
            raise
        except Exception as exc:  # sqlite3 / psycopg errors: a database we cannot use is said at start
            self.db.close()
            raise StoreUnavailable(f"The response store {self.db.label} cannot be used: {exc}") from exc
        self.liveness.beat()
        # One writer: a background response's states (queued, in progress, final) land in the order they were made.
        self._writes = OrderedWrites("response-store")

    @classmethod
    def from_settings(cls, settings: Settings) -> ResponseStore:
        return cls.open(settings.state_db, settings.cache_dir / "responses.sqlite3")

    @classmethod
    def open(cls, configured: str | None, default: Path) -> ResponseStore:
        """The operator's database (a clear error at start if unusable), else the default file in the cache
        directory; if that cannot be used (the cache dir is unusable, as the prompt cache tolerates), in memory."""
        if configured:
            return cls(configured)
        try:
            return cls(default)
        except StoreUnavailable as exc:
            logger.warning("%s; responses are kept in memory until the server stops", exc)
            return cls(None)

    def _migrate(self) -> None:
        with self.db.transaction() as execute:  # instances starting together: one migrates, the others wait
            execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = execute("SELECT version FROM schema_version")
            version = rows[0][0] if rows else 0
            if version > len(MIGRATIONS):
                raise StoreUnavailable(f"The response store {self.db.label} has schema version {version}, newer "
                                       f"than this server's {len(MIGRATIONS)}.")
            for step in MIGRATIONS[version:]:
                execute(step[self.db.dialect] if isinstance(step, dict) else step)
            execute("DELETE FROM schema_version")
            execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))

    # ------------------------------------------------------------ sync (worker threads)

    def _save(self, response: dict, input_items: list, tenant: str) -> None:
        status = response.get("status")
        self.db.change(
            "INSERT INTO responses (id, tenant, created_at, previous_response_id, response, input_items, status, "
            "owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET response = excluded.response, "
            "status = excluded.status, owner = excluded.owner WHERE responses.status IN (?, ?)",
            (response["id"], tenant, time.time(), response.get("previous_response_id"), json.dumps(response),
             json.dumps(input_items), status, self.liveness.instance if status in UNFINISHED else None, *UNFINISHED))
        # a final state (completed, failed, cancelled by any instance) is never overwritten

    def _load(self, response_id: str, tenant: str) -> tuple[dict, list]:
        rows = self.db.query("SELECT response, input_items FROM responses WHERE id = ? AND tenant = ?",
                             (response_id, tenant))
        if not rows:
            raise ResponseNotFound(response_id)
        return json.loads(rows[0][0]), json.loads(rows[0][1])

    def _delete(self, response_id: str, tenant: str) -> None:
        if not self.db.change("DELETE FROM responses WHERE id = ? AND tenant = ?", (response_id, tenant)):
            raise ResponseNotFound(response_id)

    def _conversation(self, response_id: str, tenant: str) -> list[dict]:
        """Every input and output item of the chain ending at `response_id`, oldest first."""
        turns = []
        current: str | None = response_id
        while current and len(turns) < MAX_CHAIN:
            response, items = self._load(current, tenant)
            turns.append(items + [as_input_item(item) for item in response.get("output", [])])
            current = response.get("previous_response_id")
        return [item for turn in reversed(turns) for item in turn]

    def fail_orphans(self) -> int:
        """Responses left queued or in progress by an instance that stopped mid-generation are marked failed; those
        of live instances (this one, others sharing the database) are left alone. Returns how many."""
        self.liveness.beat()
        alive = self.liveness.alive()
        error = {"code": "server_error", "message": "The server stopped before this response finished."}
        failed = 0
        for response_id, owner, text in self.db.query(
                "SELECT id, owner, response FROM responses WHERE status IN (?, ?)", UNFINISHED):
            if owner not in alive:
                failed += self._settle(response_id, text, "failed", error=error)
        return failed

    def _settle(self, response_id: str, text: str, status: str, **fields: Any) -> int:
        """Give an unfinished response its final `status` (1), unless it reached one meanwhile (0)."""
        response = {**json.loads(text), "status": status, **fields}
        return self.db.change("UPDATE responses SET response = ?, status = ? WHERE id = ? AND status IN (?, ?)",
                              (json.dumps(response), status, response_id, *UNFINISHED))

    def _cancel(self, response_id: str, tenant: str) -> None:
        rows = self.db.query("SELECT response FROM responses WHERE id = ? AND tenant = ? AND status IN (?, ?)",
                             (response_id, tenant, *UNFINISHED))
        if rows:
            self._settle(response_id, rows[0][0], "cancelled")

    def _cancelled_among(self, response_ids: list[str]) -> set[str]:
        marks = ", ".join("?" * len(response_ids))
        return {row[0] for row in self.db.query(
            f"SELECT id FROM responses WHERE status = 'cancelled' AND id IN ({marks})", response_ids)}

    # ------------------------------------------------------------ async

    def save(self, response: dict, input_items: list, tenant: str) -> Future:
        """Store a response (or a background response's new state) and return at once: the write runs on the
        writer thread, in order (with PostgreSQL it is a network round trip, which must never hold up the event
        loop and every stream on it). Reads of that response in this process wait for it (a GET right after the
        answer finds it); the returned future is done once it is in the database (where another instance can read
        it)."""
        return self._writes.submit(response["id"], self._save_logged, response, input_items, tenant)

    def flush(self) -> None:
        """Wait until the writes queued so far are in the database."""
        self._writes.flush()

    def _save_logged(self, response: dict, input_items: list, tenant: str) -> None:
        try:
            self._save(response, input_items, tenant)
        except Exception:  # nobody waits for the write: the log is where its failure is seen
            logger.exception("Could not store response %s", response.get("id"))

    async def load(self, response_id: str, tenant: str) -> tuple[dict, list]:
        await self._writes.written(response_id)
        return await asyncio.to_thread(self._load, response_id, tenant)

    async def delete(self, response_id: str, tenant: str) -> None:
        await self._writes.written(response_id)
        await asyncio.to_thread(self._delete, response_id, tenant)

    async def conversation(self, response_id: str, tenant: str) -> list[dict]:
        await self._writes.written(response_id)
        return await asyncio.to_thread(self._conversation, response_id, tenant)

    async def cancel(self, response_id: str, tenant: str) -> None:
        """Mark an unfinished response cancelled, whichever instance runs it (that one stops it: BackgroundRuns)."""
        await self._writes.written(response_id)
        await asyncio.to_thread(self._cancel, response_id, tenant)

    async def cancelled_among(self, response_ids: list[str]) -> set[str]:
        return await asyncio.to_thread(self._cancelled_among, response_ids) if response_ids else set()

    async def tend(self) -> int:
        """Periodically: say this instance is alive, fail the responses of instances that are not."""
        return await asyncio.to_thread(self.fail_orphans)

    def close(self) -> None:
        self._writes.close()  # the writes already queued land first
        self.liveness.leave()
        self.db.close()


def as_input_item(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as the next turn's input item (messages keep their text parts; calls and reasoning as is)."""
    if item.get("type") == "message":
        return {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": part.get("text", "")} for part in item.get("content", [])]}
    return item
