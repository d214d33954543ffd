"""The state database under stored Responses: SQLite (a file, embedded, the default) or PostgreSQL
(`--state-db postgresql://...`, shared by several server instances behind a load balancer).

Both speak the same small SQL (`?` placeholders, rewritten for psycopg); what differs is how they connect, lock and
report errors, which is all this module knows. Every call is one short statement or one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

Executor = Callable[..., list[tuple]]  # (sql, params=()) -> rows (none for statements without a result)


class StoreUnavailable(RuntimeError):
    """The database cannot be opened or is from a newer version of this server."""


class StateDatabase(Protocol):
    dialect: str  # "sqlite" or "postgresql"
    label: str  # where it is, for messages (never with a password)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...
    def change(self, sql: str, params: Sequence[Any] = ()) -> int: ...  # rows changed
    def transaction(self) -> Any: ...  # context manager yielding an Executor; commits at the end
    def close(self) -> None: ...


def is_postgres_url(target: str | None) -> bool:
    return bool(target) and target.split("://", 1)[0] in ("postgresql", "postgres")


def redacted(url: str) -> str:
    """The URL without its password, as it may appear in logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def open_database(target: str | Path | None) -> StateDatabase:
    """A PostgreSQL URL, a SQLite file path, or None for an in-memory SQLite database."""
    if isinstance(target, str) and is_postgres_url(target):
        return PostgresDatabase(target)
    return SqliteDatabase(Path(target) if target is not None else None)


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path | None) -> None:
        self.label = str(path) if path else "(in memory)"
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")  # a crash never leaves a half-written row
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a file that is not a database fails here
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreUnavailable(f"The response store {self.label} cannot be used: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def change(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, params).rowcount

    @contextmanager
    def transaction(self) -> Iterator[Executor]:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock first: another process migrating waits here
            yield lambda sql, params=(): self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresDatabase:
    dialect = "postgresql"
    MIGRATION_LOCK = 0x6C6C6D53  # advisory lock id: instances starting together migrate one after the other

    def __init__(self, url: str) -> None:
        import psycopg  # only with a PostgreSQL URL
        from psycopg_pool import ConnectionPool

        self.label = redacted(url)
        try:
            psycopg.connect(url, connect_timeout=10).close()  # fails at once, with the server's reason
            # a small pool: reads from several requests at once; connections that broke (the database restarted)
            # are checked and replaced by the pool
            self._pool = ConnectionPool(url, min_size=1, max_size=4, open=True, timeout=10,
                                        kwargs={"autocommit": True}, check=ConnectionPool.check_connection)
            self._pool.wait(timeout=10)
        except Exception as exc:  # psycopg and pool errors alike; the message never carries the password
            raise StoreUnavailable(f"The response store {self.label} cannot be used: "
                                   f"{str(exc).replace(url, self.label)}") from exc

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")  # our statements never hold a literal question mark

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._pool.connection() as conn:
            return conn.execute(self._sql(sql), params).fetchall()

    def change(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._pool.connection() as conn:
            return conn.execute(self._sql(sql), params).rowcount

    @contextmanager
    def transaction(self) -> Iterator[Executor]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.MIGRATION_LOCK,))

            def execute(sql: str, params: Sequence[Any] = ()) -> list[tuple]:
                cursor = conn.execute(self._sql(sql), params)
                return cursor.fetchall() if cursor.description is not None else []

            yield execute

    def close(self) -> None:
        self._pool.close()
