"""Builds OpenAI chat completion objects (whole or as stream chunks) from engine chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

from api.pipeline.choice_output import ChoiceOutput, CustomCallInput, CustomCallStarted, OutputEvent
from api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionTokenLogprob,
    ChoiceDelta,
    ChoiceLogprobs,
    CompletionTokensDetails,
    CompletionUsage,
    CustomCall,
    CustomToolCall,
    DeltaCustomCall,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    PromptTokensDetails,
    ToolCall,
    TopLogprob,
    new_completion_id,
    now_seconds,
)
from backends.base import GenerationFinished, TokenDelta, TokenLogprob, Usage
from chat.reasoning import ReasoningText
from chat.tool_call_parser import CallStarted, ContentText


def wire_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                token=entry.token,
                bytes=list(entry.token_bytes),
                logprob=entry.logprob,
                top_logprobs=[TopLogprob(token=t.token, bytes=list(t.token_bytes), logprob=t.logprob) for t in entry.top],
            )
            for entry in entries
        ]
    )


def wire_usage(usages: list[Usage]) -> CompletionUsage:
    """All choices share one prompt, so it is counted once (as OpenAI does for n > 1)."""
    prompt = usages[0].prompt_tokens if usages else 0
    completion = sum(u.completion_tokens for u in usages)
    cached = usages[0].cached_tokens if usages else 0
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=sum(u.reasoning_tokens for u in usages)),
    )


# Where reasoning goes in messages and deltas (--reasoning-format); "none" never splits it out of the content.
REASONING_FIELDS = {"reasoning_content": ("reasoning_content",), "reasoning": ("reasoning",),
                    "both": ("reasoning_content", "reasoning"), "none": ()}


def reasoning_fields(text: str | None, reasoning_format: str) -> dict[str, str]:
    return {name: text for name in REASONING_FIELDS[reasoning_format]} if text else {}


@dataclass
class ChoiceAccumulator:
    """Collects one choice's stream into a whole message."""

    output: ChoiceOutput
    reasoning_format: str = "reasoning_content"
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: GenerationFinished | None = None

    def add(self, chunk: TokenDelta | GenerationFinished) -> None:
        if isinstance(chunk, TokenDelta):
            self._take(self.output.read(chunk.text))
            self.logprobs.extend(chunk.logprobs)
        else:
            self._take(self.output.finish())
            self.finished = chunk

    def _take(self, events: list[OutputEvent]) -> None:
        self.content.extend(e.text for e in events if isinstance(e, ContentText))
        self.reasoning.extend(e.text for e in events if isinstance(e, ReasoningText))

    def message(self) -> AssistantMessage:
        text = "".join(self.content)
        thinking = reasoning_fields("".join(self.reasoning), self.reasoning_format)
        calls = [call for call in self.output.calls if call.complete]  # never return a truncated call
        if not calls:
            return AssistantMessage(content=text, **thinking)
        content = text if text.strip() else None
        if self.output.plan.legacy:
            call = FunctionCall(name=calls[0].name, arguments=calls[0].arguments)
            return AssistantMessage(content=content, function_call=call, **thinking)
        wire_calls = [self._wire_call(call) for call in calls]
        return AssistantMessage(content=content, tool_calls=wire_calls, **thinking)


    def _wire_call(self, call) -> ToolCall | CustomToolCall:
        given = self.output.custom_input(call)
        if given is not None:
            return CustomToolCall(id=call.id, custom=CustomCall(name=call.name, input=given))
        return ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


@dataclass
class CompletionIdentity:
    """What every object of one completion repeats: its id, creation time and model."""

    model: str
    id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=now_seconds)


def whole_completion(identity: CompletionIdentity, choices: list[ChoiceAccumulator], want_logprobs: bool) -> ChatCompletion:
    return ChatCompletion(
        id=identity.id,
        created=identity.created,
        model=identity.model,
        choices=[
            ChatCompletionChoice(
                index=index,
                message=choice.message(),
                logprobs=wire_logprobs(choice.logprobs) if want_logprobs else None,
                finish_reason=choice.output.finish_reason(choice.finished.finish_reason),
            )
            for index, choice in enumerate(choices)
        ],
        usage=wire_usage([choice.finished.usage for choice in choices]),
    )


def _without_nulls(value):
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


class ChunkBuilder:
    """Makes the stream's chunk objects; `include_usage` adds `usage: null` to each, as OpenAI does."""

    def __init__(self, identity: CompletionIdentity, include_usage: bool, want_logprobs: bool,
                 reasoning_format: str = "reasoning_content") -> None:
        self.identity = identity
        self.include_usage = include_usage
        self.want_logprobs = want_logprobs
        self.reasoning_format = reasoning_format

    def _chunk(self, choices: list[ChatCompletionChunkChoice], usage: CompletionUsage | None = None) -> dict:
        chunk = ChatCompletionChunk(
            id=self.identity.id,
            created=self.identity.created,
            model=self.identity.model,
            choices=choices,
            usage=usage,
        )
        exclude = None if self.include_usage else {"usage"}
        payload = chunk.model_dump(exclude=exclude)
        for choice in payload["choices"]:
            # OpenAI sends only the delta fields that changed: {"content": "Hi"}, {} in the final chunk, and in a
            # tool call's later fragments only `index` and `function.arguments`.
            choice["delta"] = _without_nulls(choice["delta"])
        return payload

    def role(self, index: int) -> dict:
        return self._chunk([ChatCompletionChunkChoice(index=index, delta=ChoiceDelta(role="assistant", content=""))])

    def events(self, index: int, events: list[OutputEvent], logprobs: tuple[TokenLogprob, ...], legacy: bool) -> list[dict]:
        """One chunk per parse event; the token logprobs ride on the first of them."""
        if not events and logprobs and self.want_logprobs:
            events = [ContentText("")]  # text still held back (a split character): the logprobs go now
        chunks = []
        for event in events:
            wire = wire_logprobs(logprobs) if self.want_logprobs and not chunks else None
            delta = _delta(event, legacy, self.reasoning_format)
            chunks.append(self._chunk([ChatCompletionChunkChoice(index=index, delta=delta, logprobs=wire)]))
        return chunks

    def finish(self, index: int, finish_reason: str) -> dict:
        return self._chunk([ChatCompletionChunkChoice(index=index, delta=ChoiceDelta(), finish_reason=finish_reason)])

    def usage(self, usages: list[Usage]) -> dict:
        return self._chunk([], usage=wire_usage(usages))


def _delta(event: OutputEvent, legacy: bool, reasoning_format: str) -> ChoiceDelta:
    if isinstance(event, CustomCallStarted):
        return ChoiceDelta(tool_calls=[DeltaToolCall(index=event.index, id=event.id,
                                                     custom=DeltaCustomCall(name=event.name, input=""))])
    if isinstance(event, CustomCallInput):
        return ChoiceDelta(tool_calls=[DeltaToolCall(index=event.index, custom=DeltaCustomCall(input=event.fragment))])
    if isinstance(event, ContentText):
        return ChoiceDelta(content=event.text)
    if isinstance(event, ReasoningText):
        return ChoiceDelta(**reasoning_fields(event.text, reasoning_format))
    if isinstance(event, CallStarted):
        function = DeltaFunctionCall(name=event.name, arguments="")
        if legacy:
            return ChoiceDelta(function_call=function)
        return ChoiceDelta(tool_calls=[DeltaToolCall(index=event.index, id=event.id, type="function", function=function)])
    function = DeltaFunctionCall(arguments=event.fragment)
    if legacy:
        return ChoiceDelta(function_call=function)
    return ChoiceDelta(tool_calls=[DeltaToolCall(index=event.index, function=function)])
