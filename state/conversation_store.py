"""The Conversations API's objects (`/v1/conversations`): a conversation (metadata) and its items in order, per
tenant, in the state database beside stored Responses (SQLite, or PostgreSQL shared by replicas).

Items are kept as they are answered (each with an `id`, messages and calls with a `status`). Writes run on one
writer thread in order (a turn's items land after the previous turn's) and return at once; this process's reads of
a conversation wait for its pending writes, so the next turn always sees the last one.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import Future
from typing import Any

from errors import ConversationItemNotFound, ConversationNotFound
from state.database import StateDatabase
from state.ordered_writes import OrderedWrites

MAX_ITEMS_PER_CHANGE = 20  # OpenAI's limit on items created or added at once


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


class ConversationStore:
    def __init__(self, db: StateDatabase) -> None:
        self.db = db
        self._writes = OrderedWrites("conversation-store")

    # ------------------------------------------------------------ sync (worker threads)

    def _create(self, tenant: str, metadata: dict, items: list[dict]) -> dict:
        conversation = {"id": new_conversation_id(), "object": "conversation", "created_at": int(time.time()),
                        "metadata": metadata}
        with self.db.transaction() as execute:
            execute("INSERT INTO conversations (id, tenant, created_at, metadata) VALUES (?, ?, ?, ?)",
                    (conversation["id"], tenant, conversation["created_at"], json.dumps(metadata)))
            _insert_items(execute, conversation["id"], items)
        return conversation

    def _get(self, tenant: str, conversation_id: str) -> dict:
        rows = self.db.query("SELECT created_at, metadata FROM conversations WHERE id = ? AND tenant = ?",
                             (conversation_id, tenant))
        if not rows:
            raise ConversationNotFound(conversation_id, param="conversation_id")
        return {"id": conversation_id, "object": "conversation", "created_at": int(rows[0][0]),
                "metadata": json.loads(rows[0][1])}

    def _update(self, tenant: str, conversation_id: str, metadata: dict) -> dict:
        if not self.db.change("UPDATE conversations SET metadata = ? WHERE id = ? AND tenant = ?",
                              (json.dumps(metadata), conversation_id, tenant)):
            raise ConversationNotFound(conversation_id, param="conversation_id")
        return self._get(tenant, conversation_id)

    def _delete(self, tenant: str, conversation_id: str) -> None:
        with self.db.transaction() as execute:
            if not execute("SELECT id FROM conversations WHERE id = ? AND tenant = ?", (conversation_id, tenant)):
                raise ConversationNotFound(conversation_id, param="conversation_id")
            execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
            execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def _add(self, tenant: str, conversation_id: str, items: list[dict]) -> list[dict]:
        self._get(tenant, conversation_id)
        with self.db.transaction() as execute:
            _insert_items(execute, conversation_id, items)
        return items

    def _items(self, tenant: str, conversation_id: str) -> list[dict]:
        """Every item, oldest first."""
        self._get(tenant, conversation_id)
        rows = self.db.query("SELECT item FROM conversation_items WHERE conversation_id = ? ORDER BY position",
                             (conversation_id,))
        return [json.loads(row[0]) for row in rows]

    def _item(self, tenant: str, conversation_id: str, item_id: str) -> dict:
        self._get(tenant, conversation_id)
        rows = self.db.query("SELECT item FROM conversation_items WHERE conversation_id = ? AND id = ?",
                             (conversation_id, item_id))
        if not rows:
            raise ConversationItemNotFound(item_id)
        return json.loads(rows[0][0])

    def _delete_item(self, tenant: str, conversation_id: str, item_id: str) -> dict:
        conversation = self._get(tenant, conversation_id)
        if not self.db.change("DELETE FROM conversation_items WHERE conversation_id = ? AND id = ?",
                              (conversation_id, item_id)):
            raise ConversationItemNotFound(item_id)
        return conversation

    def _replace(self, tenant: str, conversation_id: str, items: list[dict]) -> None:
        """All items at once (compaction rewrites the history)."""
        self._get(tenant, conversation_id)
        with self.db.transaction() as execute:
            execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
            _insert_items(execute, conversation_id, items)

    # ------------------------------------------------------------ async

    def _write(self, conversation_id: str, work, *args) -> Future:
        return self._writes.submit(conversation_id, work, *args)

    async def _read(self, conversation_id: str, work, *args) -> Any:
        await self._writes.written(conversation_id)
        return await asyncio.to_thread(work, *args)

    async def create(self, tenant: str, metadata: dict, items: list[dict]) -> dict:
        return await asyncio.to_thread(self._create, tenant, metadata, items)

    async def get(self, tenant: str, conversation_id: str) -> dict:
        return await self._read(conversation_id, self._get, tenant, conversation_id)

    async def update(self, tenant: str, conversation_id: str, metadata: dict) -> dict:
        return await asyncio.wrap_future(self._write(conversation_id, self._update, tenant, conversation_id,
                                                     metadata))

    async def delete(self, tenant: str, conversation_id: str) -> None:
        await asyncio.wrap_future(self._write(conversation_id, self._delete, tenant, conversation_id))

    async def add(self, tenant: str, conversation_id: str, items: list[dict]) -> list[dict]:
        return await asyncio.wrap_future(self._write(conversation_id, self._add, tenant, conversation_id, items))

    def add_later(self, tenant: str, conversation_id: str, items: list[dict]) -> Future:
        """A turn's items, appended in order without waiting (a Responses turn ending on the event loop)."""
        return self._write(conversation_id, self._add, tenant, conversation_id, items)

    async def items(self, tenant: str, conversation_id: str) -> list[dict]:
        return await self._read(conversation_id, self._items, tenant, conversation_id)

    async def item(self, tenant: str, conversation_id: str, item_id: str) -> dict:
        return await self._read(conversation_id, self._item, tenant, conversation_id, item_id)

    async def delete_item(self, tenant: str, conversation_id: str, item_id: str) -> dict:
        return await asyncio.wrap_future(self._write(conversation_id, self._delete_item, tenant, conversation_id,
                                                     item_id))

    async def replace(self, tenant: str, conversation_id: str, items: list[dict]) -> None:
        await asyncio.wrap_future(self._write(conversation_id, self._replace, tenant, conversation_id, items))

    def close(self) -> None:
        self._writes.close()


def _insert_items(execute, conversation_id: str, items: list[dict]) -> None:
    rows = execute("SELECT COALESCE(MAX(position), 0) FROM conversation_items WHERE conversation_id = ?",
                   (conversation_id,))
    position = rows[0][0] or 0
    for item in items:
        position += 1
        execute("INSERT INTO conversation_items (conversation_id, position, id, item) VALUES (?, ?, ?, ?)",
                (conversation_id, position, item["id"], json.dumps(item)))
