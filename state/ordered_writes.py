"""Writes to the state database that return at once and land in order: one writer thread (so a response's states,
or a conversation's turns, are written in the order they were made), and this process's reads of a key wait for
that key's latest pending write (so a read right after a write finds it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class OrderedWrites:
    def __init__(self, thread_name: str) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._pending: dict[str, Future] = {}  # the latest write of each key not yet in the database
        self._lock = threading.Lock()

    def submit(self, key: str, work: Callable[..., Any], *args: Any) -> Future:
        write = self._writer.submit(work, *args)
        with self._lock:
            self._pending[key] = write
        write.add_done_callback(lambda done: self._forget(key, done))
        return write

    def _forget(self, key: str, done: Future) -> None:
        with self._lock:
            if self._pending.get(key) is done:
                del self._pending[key]

    async def written(self, key: str | None) -> None:
        """Wait for this process's pending write of `key`, if any."""
        with self._lock:
            write = self._pending.get(key)
        if write is not None:
            await asyncio.wrap_future(write)

    def flush(self) -> None:
        """Wait until the writes queued so far are in the database."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)  # the writes already queued land first
