"""A Messages request for a remote model goes to its OpenAI-compatible upstream as a chat completion; the
upstream's answer comes back here as engine chunks, so the same Messages writer answers it.

The upstream's structured answer is rewritten as the text a local model would have written (`<think>` around
reasoning, `<tool_call>{"name": ..., "arguments": ...}</tool_call>` per call) and read back by the same splitter
and call parser as a local answer: one reader, so remote and local Messages answers cannot differ in shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from api.anthropic.output import MessagesWriter
from api.anthropic.protocol import Message
from api.pipeline.choice_output import ChoiceOutput
from backends.base import GenerationChunk, GenerationFinished, RelayedStream, RelayedWhole, TokenDelta, Usage
from chat.reasoning import THINK, ReasoningSplitter
from chat.tool_formats import HERMES
from chat.tools import ToolPlan
from errors import InvalidRequest, UpstreamError


@dataclass
class _Rewriter:
    """Upstream chat deltas -> the text a local model would have written."""

    thinking: bool = False
    open_call: bool = False
    calls_seen: set[int] = field(default_factory=set)

    def delta(self, delta: dict) -> str:
        text = ""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            text += ("" if self.thinking else THINK.open) + reasoning
            self.thinking = True
        if delta.get("content") or delta.get("tool_calls"):
            text += self._end_thinking()
        text += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            if call.get("index", 0) not in self.calls_seen:
                self.calls_seen.add(call.get("index", 0))
                text += self._end_call()
                text += f'{HERMES.call_open}{{"name": {json.dumps(function.get("name") or "")}, "arguments": '
                self.open_call = True
            text += function.get("arguments") or ""
        return text

    def end(self) -> str:
        return self._end_thinking() + self._end_call()

    def _end_thinking(self) -> str:
        if not self.thinking:
            return ""
        self.thinking = False
        return THINK.close

    def _end_call(self) -> str:
        if not self.open_call:
            return ""
        self.open_call = False
        return "}" + HERMES.call_close


def _usage(body: dict) -> Usage:
    usage = body.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0,
                 cached_tokens=cached, reasoning_tokens=reasoning)


async def _whole_chunks(answer: RelayedWhole) -> AsyncIterator[tuple[int, GenerationChunk]]:
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status_code >= 400:
        message = (body.get("error") or {}).get("message") or f"The upstream answered {answer.status_code}."
        if answer.status_code < 500:
            raise InvalidRequest(message)
        raise UpstreamError(message, upstream="upstream")
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    rewriter = _Rewriter()
    yield 0, TokenDelta(rewriter.delta(message) + rewriter.end())
    yield 0, GenerationFinished(choice.get("finish_reason") or "stop", _usage(body))


async def _stream_chunks(answer: RelayedStream) -> AsyncIterator[tuple[int, GenerationChunk]]:
    rewriter, finish, usage, buffer = _Rewriter(), "stop", Usage(0, 0), b""
    try:
        async for raw in answer.chunks:
            buffer += raw
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                payload = line.strip().removeprefix(b"data:").strip()
                if not line.startswith(b"data:") or payload == b"[DONE]" or not payload:
                    continue
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    usage = _usage(chunk)
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = rewriter.delta(choice.get("delta") or {})
                    if text:
                        yield 0, TokenDelta(text)
    finally:
        await answer.chunks.aclose()
    yield 0, TokenDelta(rewriter.end())
    yield 0, GenerationFinished(finish, usage)


@dataclass
class RelayedMessages:
    """How serve() answers a relayed Messages request: this writer, fed the upstream's answer as chunks."""

    writer: MessagesWriter
    stream: bool

    def chunks(self, answer: RelayedWhole | RelayedStream) -> AsyncIterator[tuple[int, GenerationChunk]]:
        return _stream_chunks(answer) if isinstance(answer, RelayedStream) else _whole_chunks(answer)


def relayed_messages(message: Message, stream: bool, plan: ToolPlan) -> RelayedMessages:
    output = ChoiceOutput(plan, HERMES, ReasoningSplitter(THINK))
    return RelayedMessages(MessagesWriter(message, output), stream)
