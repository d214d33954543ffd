"""The Conversations API (`/v1/conversations`) end to end: the real server and SmolLM2, the `openai` SDK strict
(its `conversations` client), Responses turns kept in a conversation, and openai-agents'
`OpenAIConversationsSession` (its items kept here) and `conversation_id` runs."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIConversationsSession, OpenAIResponsesModel, Runner

from backends.embedded_model import SMOLLM2_FILE

MODEL = SMOLLM2_FILE


def test_conversations_and_items_through_the_sdk(client):
    conversation = client.conversations.create(
        items=[{"type": "message", "role": "system", "content": "You are terse."},
               {"type": "message", "role": "user", "content": "Hello"}],
        metadata={"topic": "greeting"})
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "greeting"}
    assert client.conversations.retrieve(conversation.id).created_at == conversation.created_at
    updated = client.conversations.update(conversation.id, metadata={"topic": "weather"})
    assert updated.metadata == {"topic": "weather"}

    added = client.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]},
        {"type": "message", "role": "user", "content": "Weather?"}])
    assert [item.role for item in added.data] == ["assistant", "user"] and added.first_id == added.data[0].id
    oldest_first = [item.id for item in client.conversations.items.list(conversation.id, order="asc", limit=2)]
    assert len(oldest_first) == 4  # (pages of 2, followed by the SDK through `after`)
    newest_first = client.conversations.items.list(conversation.id)
    assert [item.id for item in newest_first.data] == oldest_first[::-1]
    first = client.conversations.items.retrieve(oldest_first[0], conversation_id=conversation.id)
    assert first.type == "message" and first.role == "system" and first.content[0].text == "You are terse."

    after_delete = client.conversations.items.delete(oldest_first[1], conversation_id=conversation.id)
    assert after_delete.id == conversation.id
    assert [item.id for item in client.conversations.items.list(conversation.id, order="asc")] == \
        [oldest_first[0], *oldest_first[2:]]
    with pytest.raises(openai.NotFoundError) as missing:
        client.conversations.items.retrieve(oldest_first[1], conversation_id=conversation.id)
    assert missing.value.body["code"] == "item_not_found"

    assert client.conversations.delete(conversation.id).deleted
    with pytest.raises(openai.NotFoundError) as gone:
        client.conversations.retrieve(conversation.id)
    assert gone.value.body["code"] == "conversation_not_found"


def test_bad_items_and_fields_are_refused_with_the_field_named(client, http):
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.conversations.create(items=[{"type": "message", "role": "critic", "content": "x"}])
    assert bad_role.value.body["param"] == "items[0].role"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.conversations.create(items=[{"type": "message", "role": "user", "content": "x"}] * 21)
    assert too_many.value.body["param"] == "items"
    with pytest.raises(openai.BadRequestError) as metadata:
        client.conversations.create(metadata={"k": "v" * 513})
    assert metadata.value.body["param"] == "metadata"
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as both:
        client.responses.create(model=MODEL, input="Hi", conversation=conversation.id, previous_response_id="resp_x")
    assert both.value.body["param"] == "conversation"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Hi", conversation="conv_missing")
    assert http.post("/v1/conversations", content=b"{not json").status_code == 400
    # (not a conversation's error, but a Responses one the engine raises: named as the client spelled it)
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}},
                                                            "required": ["a"]}}
    with pytest.raises(openai.BadRequestError) as too_few:
        client.responses.create(model=MODEL, input="Hi", tools=[tool], tool_choice="required", max_output_tokens=5)
    assert too_few.value.body["param"] == "max_output_tokens"


def test_responses_turns_are_kept_in_the_conversation_and_its_prefix_stays_cached(client):
    conversation = client.conversations.create(items=[
        {"type": "message", "role": "system", "content": "You answer questions about the capital cities of Europe."}])
    first = client.responses.create(model=MODEL, conversation=conversation.id, input="What is the capital of France?",
                                    max_output_tokens=16, temperature=0)
    assert first.conversation.id == conversation.id
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [(item.type, item.role) for item in items] == [("message", "system"), ("message", "user"),
                                                          ("message", "assistant")]
    assert items[2].content[0].text == first.output_text and items[2].id == first.output[0].id

    with client.responses.stream(model=MODEL, conversation={"id": conversation.id}, max_output_tokens=16,
                                 input="And of Italy?", temperature=0) as stream:
        second = stream.get_final_response()
    # The second prompt holds the whole first turn, and the cache kept it: only the new turn is evaluated.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    assert len(client.conversations.items.list(conversation.id).data) == 5


def test_openai_agents_sessions_keep_their_items_in_our_conversations(server):
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    agent = Agent(name="assistant", instructions="Answer in one short sentence.",
                  model=OpenAIResponsesModel(model=MODEL, openai_client=client),
                  model_settings=ModelSettings(max_tokens=300, temperature=0))

    async def run() -> tuple[list, list]:
        session = OpenAIConversationsSession(openai_client=client)
        await Runner.run(agent, "My name is Ada.", session=session)
        await Runner.run(agent, "What is my name?", session=session)
        items = await session.get_items()
        last = await session.pop_item()
        conversation_id = await session._get_session_id()
        after_pop = await session.get_items()
        # The SDK's other way: the server keeps the conversation and each run sends only its new input.
        kept = await client.conversations.create()
        await Runner.run(agent, "Say hello.", conversation_id=kept.id)
        await Runner.run(agent, "Say goodbye.", conversation_id=kept.id)
        server_items = [item async for item in client.conversations.items.list(kept.id, order="asc")]
        await session.clear_session()
        return items, [last, conversation_id, after_pop, server_items]

    items, (last, conversation_id, after_pop, server_items) = asyncio.run(run())
    users = [item["content"] for item in items if item.get("role") == "user"]
    assert [text if isinstance(text, str) else text[0]["text"] for text in users] == \
        ["My name is Ada.", "What is my name?"]
    assert items[-1]["role"] == "assistant" and last["id"] == items[-1]["id"] and len(after_pop) == len(items) - 1
    assert [item.role for item in server_items if item.type == "message"] == ["user", "assistant", "user", "assistant"]
    assert httpx.get(f"{server.base_url}/v1/conversations/{conversation_id}").status_code == 404  # cleared
