"""Legacy text completions (`/v1/completions`) on local engines: prompts used as they are (no chat template),
through the same engines, scheduler and sampling as chat. Several prompts and `n` choices each run side by side;
choice index = prompt index * n + choice. `logprobs` is the legacy integer form. `suffix` asks for fill-in-the-
middle, on models whose vocabulary has infill tokens. Fields this server cannot honour (`suffix` elsewhere,
`best_of` > n, `echo` together with `logprobs`) are a 400, never silently dropped."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from api.openai.protocol import Completion, CompletionChoice, CompletionLogprobs
from api.openai.stream_writer import OpenAIStreamWriter
from api.pipeline.prepare import sampling_params, stop_strings
from api.protocol import CompletionRequest, CompletionUsage, PromptTokensDetails, now_seconds
from api.serving import LocalRun, Payloads, generation_chunks
from backends.base import GenerationChunk, GenerationFinished, GenerationRequest, GrammarSpec, TokenDelta, TokenLogprob
from backends.registry import LoadedModel, ModelRegistry
from errors import InvalidRequest
from settings import Settings
from tenants.keys import Tenant


def _refuse_unsupported(body: CompletionRequest) -> None:
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequest("'best_of' other than n is not supported.", param="best_of")
    if body.echo and body.logprobs is not None:
        raise InvalidRequest("'echo' with 'logprobs' is not supported (prompt tokens are not scored).", param="echo")


def _prompts(body: CompletionRequest) -> list[str | list[int]]:
    """Each prompt as text or as token ids (used exactly: special tokens in them stay special)."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt or any(item in ("", []) for item in prompt):
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [prompt]
    return list(prompt)


def _prompt_text(prompt: str | list[int], model: LoadedModel) -> str:
    if isinstance(prompt, str):
        return prompt
    try:
        return model.engine.detokenize(prompt)
    except InvalidRequest as exc:
        exc.param = "prompt"
        raise


def _with_suffix(prompts: list[str | list[int]], suffix: str, model: LoadedModel) -> list[list[int]]:
    """Fill-in-the-middle: the model writes what goes between each prompt and `suffix`."""
    if any(not isinstance(prompt, str) for prompt in prompts):
        raise InvalidRequest("'suffix' needs text prompts, not token ids.", param="suffix")
    filled = [model.engine.infill_prompt(prompt, suffix) for prompt in prompts]
    if any(tokens is None for tokens in filled):
        raise InvalidRequest("'suffix' (fill-in-the-middle) is not supported by this model: its vocabulary has "
                             "no infill tokens.", param="suffix")
    return filled


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    offset: int = 0  # text offset of the next streamed token (legacy logprobs count from the echoed prompt)


def _legacy_logprobs(entries: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    tokens, offsets = [], []
    for entry in entries:
        offsets.append(offset)
        tokens.append(entry.token)
        offset += len(entry.token)
    return CompletionLogprobs(tokens=tokens, token_logprobs=[e.logprob for e in entries],
                              top_logprobs=[{t.token: t.logprob for t in e.top} for e in entries], text_offset=offsets)


def start_completion(
    body: CompletionRequest, model: LoadedModel, registry: ModelRegistry, settings: Settings, tenant: Tenant
) -> LocalRun:
    """The generations of every prompt x `n`, and the writer of their answer."""
    _refuse_unsupported(body)
    prompts = _prompts(body)
    echoed = [_prompt_text(prompt, model) for prompt in prompts] if body.echo else [""] * len(prompts)
    if body.suffix:
        prompts = _with_suffix(prompts, body.suffix, model)
    n = body.n or 1
    defaults = registry.generation_defaults(model.model_id)
    max_tokens = body.max_tokens if body.max_tokens is not None else defaults.max_tokens
    requests = [
        GenerationRequest(
            prompt=prompt, sampling=sampling_params(body, choice, defaults), max_tokens=max_tokens,
            stop=stop_strings(body), top_logprobs=body.logprobs,
            grammar=GrammarSpec(body.grammar) if body.grammar else None,
        )
        for prompt in prompts
        for choice in range(n)
    ]
    echoes = [echoed[index // n] for index in range(len(requests))]
    writer = CompletionWriter(body, model.model_id, echoes, n)
    return LocalRun(writer, generation_chunks(model, requests, settings, tenant, body), bool(body.stream))


class CompletionWriter(OpenAIStreamWriter):
    def __init__(self, body: CompletionRequest, model_id: str, echoes: list[str], n: int) -> None:
        self.identity = {"id": f"cmpl-{uuid.uuid4().hex}", "created": now_seconds(), "model": model_id}
        self.echoes, self.n = echoes, n
        self.want_logprobs = body.logprobs is not None
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.choices = [_Choice(offset=len(echo)) for echo in echoes]
        self.usages: dict[int, object] = {}

    def _chunk(self, index: int, text: str, logprobs=None, finish_reason=None) -> dict:
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason)
        return Completion(**self.identity, choices=[choice]).model_dump(exclude_none=False)

    def start(self) -> Payloads:
        return [self._chunk(index, echo) for index, echo in enumerate(self.echoes) if echo]

    def add(self, index: int, chunk: GenerationChunk) -> Payloads:
        choice = self.choices[index]
        if isinstance(chunk, TokenDelta):
            choice.text.append(chunk.text)
            choice.logprobs.extend(chunk.logprobs)
            logprobs = _legacy_logprobs(list(chunk.logprobs), choice.offset) if self.want_logprobs else None
            choice.offset += len(chunk.text)
            return [self._chunk(index, chunk.text, logprobs)]
        if isinstance(chunk, GenerationFinished):
            choice.finish_reason = chunk.finish_reason
            self.usages[index] = chunk.usage
            return [self._chunk(index, "", CompletionLogprobs() if self.want_logprobs else None, chunk.finish_reason)]
        return ()

    def usage_chunk(self) -> dict | None:
        return Completion(**self.identity, choices=[], usage=self._usage()).model_dump() if self.include_usage \
            else None

    def whole(self) -> dict:
        choices = [
            CompletionChoice(index=index, text=self.echoes[index] + "".join(choice.text),
                             finish_reason=choice.finish_reason,
                             logprobs=_legacy_logprobs(choice.logprobs, 0) if self.want_logprobs else None)
            for index, choice in enumerate(self.choices)
        ]
        return Completion(**self.identity, choices=choices, usage=self._usage()).model_dump()

    def _usage(self) -> CompletionUsage:
        # Every prompt counts once however many choices it has, as OpenAI counts.
        firsts = [usage for index, usage in self.usages.items() if index % self.n == 0]
        prompt = sum(usage.prompt_tokens for usage in firsts)
        completion = sum(usage.completion_tokens for usage in self.usages.values())
        return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                               prompt_tokens_details=PromptTokensDetails(
                                   cached_tokens=sum(usage.cached_tokens for usage in firsts)))
