"""The Conversations API's store: per tenant, items in order, pending writes seen by the next read."""

from __future__ import annotations

import asyncio

import pytest

from api.responses.conversation_items import checked_items, stored_item
from errors import ConversationItemNotFound, ConversationNotFound, InvalidRequest
from state.conversation_store import ConversationStore
from state.response_store import ResponseStore


@pytest.fixture()
def store(tmp_path):
    responses = ResponseStore(tmp_path / "state.sqlite3")
    conversations = ConversationStore(responses.db)
    yield conversations
    conversations.close()
    responses.close()


def message(role: str, text: str) -> dict:
    return stored_item({"type": "message", "role": role, "content": text})


def test_another_tenant_sees_nothing(store):
    async def scenario():
        conversation = await store.create("alice", {"k": "v"}, [message("user", "hi")])
        with pytest.raises(ConversationNotFound):
            await store.get("bob", conversation["id"])
        with pytest.raises(ConversationNotFound):
            await store.items("bob", conversation["id"])
        with pytest.raises(ConversationNotFound):
            await store.add("bob", conversation["id"], [message("user", "mine now")])
        with pytest.raises(ConversationNotFound):
            await store.delete("bob", conversation["id"])
        return await store.items("alice", conversation["id"])

    assert [item["content"][0]["text"] for item in asyncio.run(scenario())] == ["hi"]


def test_a_turn_added_without_waiting_is_read_by_the_next_turn_in_order(store):
    async def scenario():
        conversation = await store.create("t", {}, [])
        for turn in range(5):  # (nobody waits for these writes; the reads after them must still see them)
            store.add_later("t", conversation["id"], [message("user", f"q{turn}"), message("assistant", f"a{turn}")])
        items = await store.items("t", conversation["id"])
        await store.delete_item("t", conversation["id"], items[0]["id"])
        with pytest.raises(ConversationItemNotFound):
            await store.item("t", conversation["id"], items[0]["id"])
        return items, await store.items("t", conversation["id"])

    items, after = asyncio.run(scenario())
    assert [item["content"][0]["text"] for item in items] == [f"{side}{turn}" for turn in range(5) for side in "qa"]
    assert after == items[1:]


def test_items_are_kept_as_answered_and_checked_as_a_turn_reads_them():
    assistant = stored_item({"type": "message", "role": "assistant", "content": "Hi."})
    assert assistant["content"] == [{"type": "output_text", "text": "Hi.", "annotations": []}]
    assert assistant["id"].startswith("msg_") and assistant["status"] == "completed"
    call = stored_item({"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"})
    assert call["id"].startswith("fc_") and call["status"] == "completed"
    with pytest.raises(InvalidRequest) as bad:
        checked_items([{"type": "message", "role": "user", "content": "ok"}, {"type": "item_reference", "id": "x"}])
    assert bad.value.param == "items[1].type"
