"""Compaction of long Responses conversations end to end (the real server and SmolLM2, the `openai` SDK strict):
automatic past `compact_threshold` (in a conversation, streamed), `POST /v1/responses/compact`, Codex's
`compaction_trigger`, and forged items refused."""

from __future__ import annotations

import openai
import pytest

from backends.embedded_model import SMOLLM2_FILE

MODEL = SMOLLM2_FILE
QUESTIONS = ["My name is Ada and I keep owls.", "I live in Paris, near the river.", "My favourite colour is green.",
             "I work as a lighthouse keeper.", "My brother is called Tom.", "What do you know about me?"]


def turn(client, **fields):
    return client.responses.create(model=MODEL, max_output_tokens=40, temperature=0, **fields)


def test_a_conversation_past_its_threshold_is_compacted_and_keeps_working(client):
    conversation = client.conversations.create(items=[
        {"type": "message", "role": "system", "content": "You are a friendly assistant. Answer briefly."}])
    management = [{"type": "compaction", "compact_threshold": 160}]
    sizes, compacted_at = [], None
    for index, question in enumerate(QUESTIONS):
        if compacted_at is None and index >= 3:  # streamed, as a chat front end sends it
            events = list(client.responses.create(model=MODEL, input=question, conversation=conversation.id,
                                                  max_output_tokens=40, temperature=0, stream=True,
                                                  context_management=management))
            added = [event.item.type for event in events if event.type == "response.output_item.added"]
            response = events[-1].response  # (response.completed or .incomplete)
        else:
            response = turn(client, input=question, conversation=conversation.id, context_management=management)
            added = [item.type for item in response.output]
        sizes.append(response.usage.input_tokens)
        if response.output[0].type == "compaction":
            assert added[0] == "compaction" and response.output[1].type == "message"  # the item, then the answer
            compacted_at = compacted_at if compacted_at is not None else index
    assert compacted_at is not None, sizes
    assert sizes[compacted_at] < sizes[compacted_at - 1]  # the prompt shrank although a question was added
    assert max(sizes) < 160 + 80  # never far past the threshold: each turn past it compacts again
    kept = client.conversations.items.list(conversation.id, order="asc").data
    assert any(item.type == "compaction" for item in kept)


def test_the_compact_endpoint_returns_one_sealed_item_that_later_turns_expand(client):
    history = [{"role": "system", "content": "You are a friendly assistant."}]
    for question in QUESTIONS[:4]:
        history.append({"role": "user", "content": question})
        answer = turn(client, input=history)
        history.append({"role": "assistant", "content": answer.output_text})
    whole = turn(client, input=[*history, {"role": "user", "content": "Where do I live?"}])

    compacted = client.responses.compact(model=MODEL, input=history)
    assert compacted.object == "response.compaction" and [item.type for item in compacted.output] == ["compaction"]
    assert "Paris" not in compacted.output[0].encrypted_content  # opaque
    item = compacted.output[0].model_dump()
    shorter = turn(client, input=[item, {"role": "user", "content": "Where do I live?"}])
    assert shorter.output_text and shorter.usage.input_tokens < whole.usage.input_tokens

    forged = {**item, "encrypted_content": item["encrypted_content"][:-8] + "AAAAAAAA"}
    with pytest.raises(openai.BadRequestError) as refused:
        turn(client, input=[forged, {"role": "user", "content": "Where do I live?"}])
    assert refused.value.body["param"] == "input[0].encrypted_content"
    with pytest.raises(openai.BadRequestError):
        turn(client, input=[{"type": "compaction", "encrypted_content": "made up"}, {"role": "user", "content": "Hi"}])


def test_a_compaction_trigger_answers_exactly_one_compaction_item(client):
    previous = None
    for question in QUESTIONS[:3]:
        previous = turn(client, input=question, previous_response_id=previous and previous.id)
    before = turn(client, input="And?", previous_response_id=previous.id).usage.input_tokens
    triggered = client.responses.create(model=MODEL, input=[{"type": "compaction_trigger"}],
                                        previous_response_id=previous.id)
    assert [item.type for item in triggered.output] == ["compaction"] and triggered.status == "completed"
    after = turn(client, input="And?", previous_response_id=triggered.id)
    assert after.output_text and after.usage.input_tokens < before  # the chain goes on from the compacted item
    with pytest.raises(openai.BadRequestError) as misplaced:
        turn(client, input=[{"type": "compaction_trigger"}, {"role": "user", "content": "Hi"}])
    assert misplaced.value.body["param"] == "input[0].type"
    with pytest.raises(openai.BadRequestError) as bad_threshold:
        turn(client, input="Hi", context_management=[{"type": "compaction", "compact_threshold": 0}])
    assert bad_threshold.value.body["param"] == "context_management[0].compact_threshold"
