"""Stored Responses: each stored response with the input items it answered, in SQLite (`cache/responses.sqlite3`,
WAL, so a crash never leaves a half-written row), keyed by the tenant that made it (another key never sees it).

Schema migrations are versioned (`schema_version`); a database newer than this code, or not a database at all, is
a clear error at start. Writes are single small transactions, done off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from errors import ResponseNotFound

MIGRATIONS = [
    """CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at REAL NOT NULL,
        previous_response_id TEXT,
        response TEXT NOT NULL,      -- the response object, as answered
        input_items TEXT NOT NULL    -- the input items it answered (this turn's only)
    )""",
    "CREATE INDEX responses_previous ON responses (previous_response_id)",
]
logger = logging.getLogger(__name__)
MAX_CHAIN = 1000  # previous_response_id links followed at most (a loop in stored data must not hang a request)


class StoreUnavailable(RuntimeError):
    """The database cannot be opened or is from a newer version of this server."""


class ResponseStore:
    def __init__(self, path: Path | None) -> None:
        """`path` None: in memory (kept for this process only)."""
        self.path = path
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreUnavailable(f"The response store {path} cannot be used: {exc}") from exc

    @classmethod
    def open(cls, configured: Path | None, default: Path) -> ResponseStore:
        """The operator's database (a clear error at start if unusable), else the default file in the cache
        directory; if that cannot be used (the cache dir is unusable, as the prompt cache tolerates), in memory."""
        if configured is not None:
            return cls(configured)
        try:
            return cls(default)
        except StoreUnavailable as exc:
            logger.warning("%s; responses are kept in memory until the server stops", exc)
            return cls(None)

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise StoreUnavailable(f"The response store {self.path} has schema version {version}, newer than this "
                                   f"server's {len(MIGRATIONS)}.")
        for index in range(version, len(MIGRATIONS)):
            with self._db:  # each step and its version bump in one transaction
                self._db.execute("BEGIN")
                self._db.execute(MIGRATIONS[index])
                self._db.execute("DELETE FROM schema_version")
                self._db.execute("INSERT INTO schema_version VALUES (?)", (index + 1,))

    # ------------------------------------------------------------ sync (worker threads)

    def _save(self, response: dict, input_items: list, tenant: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                             (response["id"], tenant, time.time(), response.get("previous_response_id"),
                              json.dumps(response), json.dumps(input_items)))

    def _load(self, response_id: str, tenant: str) -> tuple[dict, list]:
        with self._lock:
            row = self._db.execute("SELECT response, input_items FROM responses WHERE id = ? AND tenant = ?",
                                   (response_id, tenant)).fetchone()
        if row is None:
            raise ResponseNotFound(response_id)
        return json.loads(row[0]), json.loads(row[1])

    def _delete(self, response_id: str, tenant: str) -> None:
        with self._lock:
            deleted = self._db.execute("DELETE FROM responses WHERE id = ? AND tenant = ?",
                                       (response_id, tenant)).rowcount
        if not deleted:
            raise ResponseNotFound(response_id)

    def _conversation(self, response_id: str, tenant: str) -> list[dict]:
        """Every input and output item of the chain ending at `response_id`, oldest first."""
        turns = []
        current: str | None = response_id
        while current and len(turns) < MAX_CHAIN:
            response, items = self._load(current, tenant)
            turns.append(items + [_as_input(item) for item in response.get("output", [])])
            current = response.get("previous_response_id")
        return [item for turn in reversed(turns) for item in turn]

    def fail_unfinished(self) -> int:
        """At start: responses a previous run left queued or in progress (it stopped mid-generation) are failed."""
        error = '{"code": "server_error", "message": "The server stopped before this response finished."}'
        with self._lock:
            return self._db.execute(
                "UPDATE responses SET response = json_set(response, '$.status', 'failed', '$.error', json(?)) "
                "WHERE json_extract(response, '$.status') IN ('queued', 'in_progress')", (error,)).rowcount

    # ------------------------------------------------------------ async

    def save_now(self, response: dict, input_items: list, tenant: str) -> None:
        """On the event loop, when the answer ends: one small insert (~1 ms), so a GET right after finds it."""
        self._save(response, input_items, tenant)

    async def load(self, response_id: str, tenant: str) -> tuple[dict, list]:
        return await asyncio.to_thread(self._load, response_id, tenant)

    async def delete(self, response_id: str, tenant: str) -> None:
        await asyncio.to_thread(self._delete, response_id, tenant)

    async def conversation(self, response_id: str, tenant: str) -> list[dict]:
        return await asyncio.to_thread(self._conversation, response_id, tenant)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _as_input(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as the next turn's input item (messages keep their text parts; calls and reasoning as is)."""
    if item.get("type") == "message":
        return {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": part.get("text", "")} for part in item.get("content", [])]}
    return item
