"""Builds a Responses API answer from engine chunks: the stream's typed events and the final response object.

The whole (non-stream) answer is the final object of the same event sequence, so stream and whole never
differ. Output items open lazily: a reasoning item when a thinking model reasons, a message when visible text
arrives, a function_call item per parsed call.
Whitespace before a tool call opens no message (models often write a newline before the call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from api.pipeline.choice_output import ChoiceOutput, CustomCallInput, CustomCallStarted, OutputEvent
from api.responses.protocol import (
    CustomToolCallItem,
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningTextPart,
    ResponseError,
    ResponseObject,
    ResponseUsage,
    new_item_id,
)
from api.serving import AnswerWriter
from backends.base import GenerationFinished, TokenDelta, TokenLogprob, Usage
from chat.reasoning import ReasoningText
from chat.tool_call_parser import CallArguments, CallStarted, ContentText
from errors import ServerError

Event = dict[str, Any]


def wire_logprobs(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {"token": e.token, "bytes": list(e.token_bytes), "logprob": e.logprob,
         "top_logprobs": [{"token": t.token, "bytes": list(t.token_bytes), "logprob": t.logprob} for t in e.top]}
        for e in entries
    ]


def response_usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=usage.reasoning_tokens),
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


class ResponseWriter(AnswerWriter):
    """Feeds on one choice's engine chunks; returns the events each one causes, in order. The whole answer is
    the response object those same events built, so a stream and a whole answer cannot differ."""

    named_events = True  # `event: response.output_text.delta`

    def __init__(self, response: ResponseObject, output: ChoiceOutput, want_logprobs: bool,
                 on_done: Callable[[dict], Future] | None = None) -> None:
        """`on_done`: given the final response object once generation ends (to store it: the write it returns is
        waited for before the client sees the end)."""
        self.on_done = on_done
        self.answers = True  # False: a warm-up (`generate: false`), whose output stays empty
        self._stored: Future | None = None
        self.response = response
        self.output = output
        self.want_logprobs = want_logprobs
        self._sequence = 0
        self._message: OutputMessage | None = None  # the message item being written, if any
        self._call: FunctionCallItem | CustomToolCallItem | None = None  # the call item being written, if any
        self._reasoning: ReasoningItem | None = None  # the reasoning item being written, if any
        self._held_space = ""  # whitespace not yet known to belong to a message
        self._held_logprobs: list[TokenLogprob] = []

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _lifecycle(self, kind: str) -> Event:
        return self._event(kind, response=self.response.model_dump(mode="json"))

    def start(self) -> list[Event]:
        made, self.response.output = self.response.output, []  # made before generating (a compaction item):
        events = [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]  # added after these
        self.response.output = made
        for index, item in enumerate(made):
            body = item.model_dump(mode="json")
            events += [self._event("response.output_item.added", output_index=index, item=body),
                       self._event("response.output_item.done", output_index=index, item=body)]
        return events

    def whole(self) -> dict:
        return self.response.model_dump(mode="json")

    def add(self, index: int, chunk: TokenDelta | GenerationFinished) -> list[Event]:
        if isinstance(chunk, TokenDelta):
            self._held_logprobs.extend(chunk.logprobs if self.want_logprobs else ())
            return self._parse_events(self.output.read(chunk.text))
        events = self._parse_events(self.output.finish())
        return events + self._finish(chunk)

    def fail(self, error: ServerError) -> list[Event]:
        """A stream that broke after its headers: one `error` event, then `response.failed`."""
        self.response.status = "failed"
        self.response.error = ResponseError(code="server_error", message=error.message)
        error_event = self._event("error", code=error.code, message=error.message, param=error.param)
        return [error_event, self._lifecycle("response.failed")]

    # ------------------------------------------------------------ items

    def _parse_events(self, parsed: list[OutputEvent]) -> list[Event]:
        events: list[Event] = []
        for item in parsed:
            if isinstance(item, ReasoningText):
                events += self._reasoning_text(item.text)
            elif isinstance(item, ContentText):
                events += self._text(item.text)
            elif isinstance(item, CallStarted | CustomCallStarted):
                events += self._close_open_items("completed")
                self._held_space, self._held_logprobs = "", []  # the call's tokens: no output_text logprobs
                events += self._open_call(item)
            elif isinstance(item, CustomCallInput) and isinstance(self._call, CustomToolCallItem):
                self._call.input += item.fragment
                events.append(self._event("response.custom_tool_call_input.delta", item_id=self._call.id,
                                          output_index=self._index(self._call), delta=item.fragment))
            elif isinstance(item, CallArguments) and isinstance(self._call, FunctionCallItem):
                self._call.arguments += item.fragment
                events.append(self._event("response.function_call_arguments.delta", item_id=self._call.id,
                                          output_index=self._index(self._call), delta=item.fragment))
        return events

    def _reasoning_text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._reasoning is None:
            events += self._close_open_items("completed")
            self._reasoning = ReasoningItem(id=new_item_id("rs"), content=[ReasoningTextPart()])
            self.response.output.append(self._reasoning)
            events.append(self._event("response.output_item.added", output_index=self._index(self._reasoning),
                                      item=self._reasoning.model_dump(mode="json")))
        self._reasoning.content[0].text += text
        events.append(self._event("response.reasoning_text.delta", item_id=self._reasoning.id,
                                  output_index=self._index(self._reasoning), content_index=0, delta=text))
        return events

    def _close_reasoning(self, status: str) -> list[Event]:
        if self._reasoning is None:
            return []
        item, self._reasoning = self._reasoning, None
        item.status, index = status, self._index(item)
        return [self._event("response.reasoning_text.done", item_id=item.id, output_index=index, content_index=0,
                            text=item.content[0].text),
                self._event("response.output_item.done", output_index=index, item=item.model_dump(mode="json"))]

    def _index(self, item: ReasoningItem | OutputMessage | FunctionCallItem | CustomToolCallItem) -> int:
        return len(self.response.output) - 1 if self.response.output[-1] is item else self.response.output.index(item)

    def _text(self, text: str) -> list[Event]:
        if self._message is None and not (self._held_space + text).strip():
            self._held_space += text
            return []
        events = self._open_message() if self._message is None else []
        text, self._held_space = self._held_space + text, ""
        if not text:
            return events
        logprobs, self._held_logprobs = wire_logprobs(self._held_logprobs), []
        part = self._message.content[0]
        part.text += text
        if self.want_logprobs:
            part.logprobs = (part.logprobs or []) + logprobs
        events.append(self._event("response.output_text.delta", item_id=self._message.id,
                                  output_index=self._index(self._message), content_index=0, delta=text,
                                  logprobs=logprobs))
        return events

    def _open_message(self) -> list[Event]:
        closed = self._close_reasoning("completed")
        self._message = OutputMessage(id=new_item_id("msg"))
        self.response.output.append(self._message)
        index = self._index(self._message)
        part = OutputText(logprobs=[] if self.want_logprobs else None)
        added = self._event("response.output_item.added", output_index=index, item=self._message.model_dump(mode="json"))
        self._message.content.append(part)
        part_added = self._event("response.content_part.added", item_id=self._message.id, output_index=index,
                                 content_index=0, part=part.model_dump(mode="json"))
        return [*closed, added, part_added]

    def _open_call(self, started: CallStarted | CustomCallStarted) -> list[Event]:
        if isinstance(started, CustomCallStarted):
            self._call = CustomToolCallItem(id=new_item_id("ctc"), call_id=started.id, name=started.name)
        else:
            self._call = FunctionCallItem(id=new_item_id("fc"), call_id=started.id, name=started.name)
        self.response.output.append(self._call)
        return [self._event("response.output_item.added", output_index=self._index(self._call),
                            item=self._call.model_dump(mode="json"))]

    def _close_open_items(self, status: str) -> list[Event]:
        events = self._close_reasoning(status)
        if self._message is not None:
            message, self._message = self._message, None
            message.status = status
            index, part = self._index(message), message.content[0]
            events += [
                self._event("response.output_text.done", item_id=message.id, output_index=index, content_index=0,
                            text=part.text, logprobs=part.logprobs or []),
                self._event("response.content_part.done", item_id=message.id, output_index=index, content_index=0,
                            part=part.model_dump(mode="json")),
                self._event("response.output_item.done", output_index=index, item=message.model_dump(mode="json")),
            ]
        if self._call is not None:
            call, self._call = self._call, None
            complete = any(c.id == call.call_id and c.complete for c in self.output.calls)
            call.status = "completed" if complete else "incomplete"  # cut off by max_output_tokens
            index = self._index(call)
            done = self._event("response.custom_tool_call_input.done", item_id=call.id, output_index=index,
                               input=call.input) if isinstance(call, CustomToolCallItem) else \
                self._event("response.function_call_arguments.done", item_id=call.id, output_index=index,
                            arguments=call.arguments)
            events += [done, self._event("response.output_item.done", output_index=index,
                                         item=call.model_dump(mode="json"))]
        return events

    async def settled(self) -> None:
        if self._stored is not None:  # a failed write is logged by the store; the answer still goes out
            await asyncio.wrap_future(self._stored)

    def _finish(self, finished: GenerationFinished) -> list[Event]:
        events: list[Event] = []
        if self.answers and not any(item.type != "reasoning" for item in self.response.output):  # a blank message
            events += self._open_message() + self._text("")
        truncated = finished.finish_reason == "length"
        events += self._close_open_items("incomplete" if truncated else "completed")
        self.response.usage = response_usage(finished.usage)
        if truncated:
            self.response.status = "incomplete"
            self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        else:
            self.response.status = "completed"
            self.response.completed_at = float(int(time.time()))
        if self.on_done is not None:
            self._stored = self.on_done(self.response.model_dump(mode="json"))
        return events + [self._lifecycle(f"response.{self.response.status}")]
