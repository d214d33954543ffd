"""Builds OpenAI chat completion objects (whole or as stream chunks) from engine chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

from api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionTokenLogprob,
    ChoiceDelta,
    ChoiceLogprobs,
    CompletionUsage,
    PromptTokensDetails,
    TopLogprob,
    new_completion_id,
    now_seconds,
)
from backends.base import GenerationFinished, TokenDelta, TokenLogprob, Usage


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
    )


@dataclass
class ChoiceAccumulator:
    """Collects one choice's stream into a whole message."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: GenerationFinished | None = None

    def add(self, chunk: TokenDelta | GenerationFinished) -> None:
        if isinstance(chunk, TokenDelta):
            self.text.append(chunk.text)
            self.logprobs.extend(chunk.logprobs)
        else:
            self.finished = chunk


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
                message=AssistantMessage(content="".join(choice.text)),
                logprobs=wire_logprobs(choice.logprobs) if want_logprobs else None,
                finish_reason=choice.finished.finish_reason,
            )
            for index, choice in enumerate(choices)
        ],
        usage=wire_usage([choice.finished.usage for choice in choices]),
    )


class ChunkBuilder:
    """Makes the stream's chunk objects; `include_usage` adds `usage: null` to each, as OpenAI does."""

    def __init__(self, identity: CompletionIdentity, include_usage: bool, want_logprobs: bool) -> None:
        self.identity = identity
        self.include_usage = include_usage
        self.want_logprobs = want_logprobs

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
            # OpenAI sends only the delta fields that changed: {"content": "Hi"}, and {} in the final chunk.
            choice["delta"] = {key: value for key, value in choice["delta"].items() if value is not None}
        return payload

    def role(self, index: int) -> dict:
        return self._chunk([ChatCompletionChunkChoice(index=index, delta=ChoiceDelta(role="assistant", content=""))])

    def delta(self, index: int, delta: TokenDelta) -> dict:
        logprobs = wire_logprobs(delta.logprobs) if self.want_logprobs else None
        return self._chunk(
            [ChatCompletionChunkChoice(index=index, delta=ChoiceDelta(content=delta.text), logprobs=logprobs)]
        )

    def finish(self, index: int, finished: GenerationFinished) -> dict:
        return self._chunk(
            [ChatCompletionChunkChoice(index=index, delta=ChoiceDelta(), finish_reason=finished.finish_reason)]
        )

    def usage(self, usages: list[Usage]) -> dict:
        return self._chunk([], usage=wire_usage(usages))
