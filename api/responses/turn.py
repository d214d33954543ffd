"""One Responses turn, whatever carries it (HTTP or a WebSocket): the request checked, the history it continues,
the generation started, and what it keeps once done (the stored response, the conversation's new items, and, on a
WebSocket, the connection's memory of its latest responses)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import aclosing
from typing import Any

from api.pipeline.prepare import PreparedChat, prepare_chat, render_for_cache
from api.pipeline.reasoning_plan import server_reasoning
from api.responses.compaction import (
    SUMMARY_REQUEST,
    CompactionSeal,
    compaction_item,
    context_threshold,
    expanded,
    since_last_compaction,
    split_history,
)
from api.responses.conversation_items import stored_item
from api.responses.output import ResponseWriter
from api.responses.protocol import CompactionItem, ResponseObject, ResponsesRequest
from api.responses.request import (
    check_response_limits,
    conversation_id,
    input_items,
    responses_param_names,
    to_chat_request,
    wants_logprobs,
)
from api.serving import ChoiceChunks, generation_chunks
from backends.base import GenerationFinished, Usage
from backends.registry import LoadedModel, ModelRegistry
from errors import InvalidRequest
from settings import Settings
from state.conversation_store import ConversationStore
from state.response_store import ResponseStore, as_input_item
from tenants.keys import Tenant

logger = logging.getLogger(__name__)
MIN_SUMMARY_TOKENS = 32


def parsed_request(body: Any, settings: Settings) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    parsed = ResponsesRequest.model_validate(body)  # a ValidationError becomes the app's usual 400
    if parsed.model_extra:
        logger.debug("Ignoring fields this server does not use: %s", sorted(parsed.model_extra))
    check_response_limits(parsed, settings.max_tokens_limit, settings.max_messages)
    return parsed


class RecentResponses:
    """A WebSocket connection's memory of its latest responses' whole histories (OpenAI's connection-local state):
    the next turn's `previous_response_id` is found here without reading the chain from the store, and a
    `store: false` chain can go on at all."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._histories: OrderedDict[str, list[dict]] = OrderedDict()

    def get(self, response_id: str) -> list[dict] | None:
        return self._histories.get(response_id)

    def remember(self, response_id: str, history: list[dict]) -> None:
        self._histories[response_id] = history
        self._histories.move_to_end(response_id)
        while len(self._histories) > self.size:
            self._histories.popitem(last=False)


class Keeping:
    """What a turn keeps: the response (unless `store: false`), and the turn's items in its `conversation`."""

    def __init__(self, parsed: ResponsesRequest, tenant: Tenant, store: ResponseStore,
                 conversations: ConversationStore, recent: RecentResponses | None = None) -> None:
        self.parsed, self.tenant, self.store, self.conversations = parsed, tenant, store, conversations
        self.recent = recent
        self.conversation = conversation_id(parsed)
        self.items = input_items(parsed)
        self._history: list[dict] = []

    async def history(self) -> list[dict]:
        """The items this turn continues, as kept (compaction items included: start_turn expands them)."""
        previous = self.parsed.previous_response_id
        if self.conversation:  # (404 if it is not this key's)
            self._history = await self.conversations.items(self.tenant.label, self.conversation)
        elif previous and self.recent is not None and (known := self.recent.get(previous)) is not None:
            self._history = known
        elif previous:
            self._history = await self.store.conversation(previous, self.tenant.label)
        return self._history

    def attach(self, writer: ResponseWriter) -> None:
        if self.conversation:
            writer.response.conversation = {"id": self.conversation}
        if self.conversation or self.parsed.store is not False or self.recent is not None:
            writer.on_done = self._done

    def _done(self, response: dict) -> Future | None:
        """Stored once generated, for previous_response_id and GET; the conversation gets the turn's input and
        output items (the write the writer waits for: the next turn must read them)."""
        if self.recent is not None:
            outputs = [as_input_item(item) for item in response.get("output", [])]
            self.recent.remember(response["id"], [*self._history, *self.items, *outputs])
        saved = self.store.save(response, self.items, self.tenant.label) if self.parsed.store is not False else None
        if not self.conversation:
            return saved
        turn = [stored_item(item) for item in self.items + response.get("output", [])]
        return self.conversations.add_later(self.tenant.label, self.conversation, turn)


def _prepared(body: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings,
              history: list[dict]) -> PreparedChat:
    with responses_param_names():
        chat = to_chat_request(body, history)
        return prepare_chat(chat, model.renderer, model.engine.capabilities,
                            registry.generation_defaults(model.model_id), server_reasoning(settings))


def start_generation(
    body: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings, tenant: Tenant,
    history: list[dict], response_id: str | None = None, prepared: PreparedChat | None = None,
) -> tuple[ResponseWriter, ChoiceChunks]:
    prepared = prepared or _prepared(body, model, registry, settings, history)
    chunks = generation_chunks(model, prepared.requests, settings, tenant, body)
    return _writer(body, model, prepared, response_id), _spelled_as_sent(chunks)


def _writer(body: ResponsesRequest, model: LoadedModel, prepared: PreparedChat,
            response_id: str | None) -> ResponseWriter:
    """The writer of the response `body` asks for, its object filled from the request."""
    text_format = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format \
        else {"type": "text"}
    shell = ResponseObject(
        model=model.model_id, instructions=body.instructions, max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {}, parallel_tool_calls=body.parallel_tool_calls is not False,
        temperature=body.temperature, top_p=body.top_p, text={"format": text_format},
        tool_choice=body.tool_choice.model_dump(exclude_none=True) if hasattr(body.tool_choice, "model_dump")
        else body.tool_choice or "auto",
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
        top_logprobs=body.top_logprobs, user=body.user, previous_response_id=body.previous_response_id,
        store=body.store is not False, **({"id": response_id} if response_id else {}),
    )
    return ResponseWriter(shell, prepared.output(), wants_logprobs(body))


async def _spelled_as_sent(chunks: ChoiceChunks) -> ChoiceChunks:
    """The chunks; an error the engine raises before its first one (a max_tokens too small for the answer a grammar
    allows) names the field as a Responses client sent it."""
    try:
        with responses_param_names():
            async for item in chunks:
                yield item
    finally:
        await chunks.aclose()


async def start_turn(parsed: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings,
                     tenant: Tenant, kept: Keeping, seal: CompactionSeal,
                     response_id: str | None = None) -> tuple[ResponseWriter, ChoiceChunks]:
    """The turn's generation over its history, compacting it first when asked (api/responses/compaction.py): for
    a `compaction_trigger` the response is the compaction item alone; past `compact_threshold` the item leads
    the output and the answer is written from the compacted context. The writer keeps what `kept` says once
    the turn ends."""
    writer, chunks = await _started(parsed, model, registry, settings, tenant, kept, seal, response_id)
    kept.attach(writer)
    return writer, chunks


async def _started(parsed: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings,
                   tenant: Tenant, kept: Keeping, seal: CompactionSeal,
                   response_id: str | None) -> tuple[ResponseWriter, ChoiceChunks]:
    history = since_last_compaction(await kept.history())
    items = kept.items
    if items and items[-1].get("type") == "compaction_trigger":  # the compaction is this response's generation
        item, usage = await compact([*history, *items[:-1]], parsed, model, registry, settings, tenant, seal)
        body = parsed.model_copy(update={"input": []})
        writer = _writer(body, model, _prepared(body, model, registry, settings, expanded([item], seal)), response_id)
        writer.response.output.append(CompactionItem(**item))
        return writer, _finished(usage)
    body = parsed.model_copy(update={"input": expanded(items, seal)})
    past = expanded(history, seal, "previous_response_id")
    prepared = _prepared(body, model, registry, settings, past)
    if parsed.generate is False:
        return await _warm_up(body, model, registry, past, prepared, response_id)
    threshold = context_threshold(parsed.context_management)
    if threshold is not None and _prompt_tokens(prepared, model) > threshold:
        item, _ = await compact([*history, *items], parsed, model, registry, settings, tenant, seal)
        body = parsed.model_copy(update={"input": expanded([item], seal)})
        writer, chunks = start_generation(body, model, registry, settings, tenant, [], response_id)
        writer.response.output.append(CompactionItem(**item))
        return writer, chunks
    return start_generation(body, model, registry, settings, tenant, past, response_id, prepared)


async def _warm_up(body: ResponsesRequest, model: LoadedModel, registry: ModelRegistry, history: list[dict],
                   prepared: PreparedChat, response_id: str | None) -> tuple[ResponseWriter, ChoiceChunks]:
    """`generate: false` (OpenAI's WebSocket warm-up): the turn's prompt evaluated into the prompt cache, nothing
    generated; the response (empty output) can be continued with previous_response_id, and that turn starts
    from the cache."""
    with responses_param_names():
        chat = to_chat_request(body, history)
    prompt, conversation = render_for_cache(chat, model.renderer, registry.generation_defaults(model.model_id))
    warmed = await model.engine.warm_prompt(prompt, conversation)
    writer = _writer(body, model, prepared, response_id)
    writer.answers = False
    return writer, _finished(Usage(warmed.prompt_tokens, 0, cached_tokens=warmed.reused_tokens))


def _prompt_tokens(prepared: PreparedChat, model: LoadedModel) -> int:
    prompt = prepared.requests[0].prompt
    return len(prompt) if isinstance(prompt, list) else model.engine.count_tokens(prompt)


async def _finished(usage: Usage) -> ChoiceChunks:
    yield 0, GenerationFinished("stop", usage)


async def compact(items: list[dict], parsed: ResponsesRequest, model: LoadedModel, registry: ModelRegistry,
                  settings: Settings, tenant: Tenant, seal: CompactionSeal) -> tuple[dict, Usage]:
    """One compaction item for `items` (a history, oldest first), and what writing its summary used. The summary
    is asked with the conversation's own instructions and tools, so its prompt starts as the conversation's does
    and the prompt cache serves that prefix."""
    head, middle, tail = split_history(expanded(items, seal))
    if not middle:
        return compaction_item(seal, head, "(Nothing happened before this request.)", tail), Usage(0, 0)
    ask = {"type": "message", "role": "user", "content": SUMMARY_REQUEST}
    fields = {"previous_response_id": None, "conversation": None, "stream": False, "store": False, "text": None,
              "tool_choice": "none" if parsed.tools else None, "context_management": None}
    request = parsed.model_copy(update={**fields, "input": [*head, *middle, ask]})
    prompt = _prompt_tokens(_prepared(request, model, registry, settings, []), model)
    replaced = prompt - _prompt_tokens(_prepared(parsed.model_copy(update={**fields, "input": [*head, ask]}),
                                                 model, registry, settings, []), model)
    # A summary at most half as long as what it replaces (the context must shrink), within the setting and the
    # room the context leaves.
    budget = min(settings.compaction_summary_tokens, max(MIN_SUMMARY_TOKENS, replaced // 2),
                 model.engine.context_length - prompt)
    request = request.model_copy(update={"max_output_tokens": max(1, budget)})
    writer, chunks = start_generation(request, model, registry, settings, tenant, [])
    usage = Usage(0, 0)
    async with aclosing(chunks):
        async for index, chunk in chunks:
            writer.add(index, chunk)
            if isinstance(chunk, GenerationFinished):
                usage = chunk.usage
    summary = "".join(part.text for item in writer.response.output if item.type == "message"
                      for part in item.content).strip()
    return compaction_item(seal, head, summary, tail), usage
