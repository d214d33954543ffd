"""The web page's conversations, kept by the server (so they follow a key from browser to browser): each one the
page's own JSON (a tree of messages with its branches), per tenant, in the state database beside stored Responses
(SQLite by default, PostgreSQL when replicas share one). The server does not read inside them beyond the title and
timestamps it lists, and a search through their text."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from state.database import StateDatabase

LIST_LIMIT = 500  # (the request body limit, --max-body-bytes, bounds one conversation, images included)


class PageConversations:
    def __init__(self, db: StateDatabase) -> None:
        self.db = db

    def _list(self, tenant: str, query: str) -> list[dict]:
        sql = "SELECT id, title, created, updated FROM page_conversations WHERE tenant = ?"
        params: list[Any] = [tenant]
        if query:  # (a plain substring: LIKE's own wildcards in the query are escaped)
            escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            sql += " AND (lower(title) LIKE ? ESCAPE '\\' OR lower(body) LIKE ? ESCAPE '\\')"
            params += [f"%{escaped}%"] * 2
        rows = self.db.query(sql + " ORDER BY updated DESC LIMIT ?", (*params, LIST_LIMIT))
        return [{"id": row[0], "title": row[1], "created": row[2], "updated": row[3]} for row in rows]

    def _get(self, tenant: str, conversation_id: str) -> dict | None:
        rows = self.db.query("SELECT body FROM page_conversations WHERE tenant = ? AND id = ?",
                             (tenant, conversation_id))
        return json.loads(rows[0][0]) if rows else None

    def _put(self, tenant: str, conversation: dict, body: str) -> None:
        self.db.change(
            "INSERT INTO page_conversations (tenant, id, title, created, updated, body) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, id) DO UPDATE SET title = excluded.title, updated = excluded.updated, "
            "body = excluded.body",
            (tenant, conversation["id"], str(conversation.get("title") or "Chat")[:200],
             float(conversation.get("created") or 0), float(conversation.get("updated") or 0), body))

    def _delete(self, tenant: str, conversation_id: str) -> bool:
        return self.db.change("DELETE FROM page_conversations WHERE tenant = ? AND id = ?",
                              (tenant, conversation_id)) > 0

    async def list(self, tenant: str, query: str = "") -> list[dict]:
        return await asyncio.to_thread(self._list, tenant, query)

    async def get(self, tenant: str, conversation_id: str) -> dict | None:
        return await asyncio.to_thread(self._get, tenant, conversation_id)

    async def put(self, tenant: str, conversation: dict, body: str) -> None:
        await asyncio.to_thread(self._put, tenant, conversation, body)

    async def delete(self, tenant: str, conversation_id: str) -> bool:
        return await asyncio.to_thread(self._delete, tenant, conversation_id)
