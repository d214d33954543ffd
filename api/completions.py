"""Legacy text completions (`/v1/completions`) on local engines: prompts used as they are (no chat template),
through the same engines, scheduler and sampling as chat. Several prompts and `n` choices each run side by side;
choice index = prompt index * n + choice. `logprobs` is the legacy integer form. `suffix` asks for fill-in-the-
middle, on models whose vocabulary has infill tokens. Fields this server cannot honour (`suffix` elsewhere,
`best_of` > n, `echo` together with `logprobs`) are a 400, never silently dropped."""

from __future__ import annotations

import json
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from api.chat_request import sampling_params, stop_strings
from api.choice_streams import consume_unless_disconnected, merge_choices
from api.errors import error_body
from api.observability import observe
from api.protocol import CompletionRequest, now_seconds
from backends.base import GenerationFinished, GenerationRequest, GrammarSpec, TokenDelta, TokenLogprob
from backends.registry import LoadedModel, ModelRegistry
from errors import InvalidRequest, ServerError


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


def _legacy_logprobs(entries: list[TokenLogprob], offset: int) -> dict:
    tokens, offsets = [], []
    for entry in entries:
        offsets.append(offset)
        tokens.append(entry.token)
        offset += len(entry.token)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries], "text_offset": offsets}


async def handle_completion(
    body: CompletionRequest, model: LoadedModel, registry: ModelRegistry, resources: AsyncExitStack, request: Request
) -> Response:
    """Runs with the model leased in `resources`; a stream takes the lease over and releases it when done."""
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
    chunks = observe(merge_choices([model.engine.generate(r) for r in requests]), model.model_id,
                     model.engine.engine_kind)
    identity = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": now_seconds(),
                "model": model.model_id}
    echoes = [echoed[index // n] for index in range(len(requests))]
    if body.stream:
        first = await anext(chunks)  # a request that cannot start is a real HTTP error, not a broken stream
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream(identity, first, chunks, echoes, n, body.logprobs is not None, include_usage, resources)
        return EventSourceResponse(events, sep="\n", ping=15)
    choices = [_Choice() for _ in requests]
    usages: dict[int, object] = {}

    def take(item) -> None:
        index, chunk = item
        if isinstance(chunk, TokenDelta):
            choices[index].text.append(chunk.text)
            choices[index].logprobs.extend(chunk.logprobs)
        elif isinstance(chunk, GenerationFinished):
            choices[index].finish_reason = chunk.finish_reason
            usages[index] = chunk.usage

    if not await consume_unless_disconnected(chunks, take, request.receive):
        return Response(status_code=499)  # the client left; its generations were cancelled
    wire_choices = [
        {"index": index, "text": echoes[index] + "".join(choice.text), "finish_reason": choice.finish_reason,
         "logprobs": _legacy_logprobs(choice.logprobs, 0) if body.logprobs is not None else None}
        for index, choice in enumerate(choices)
    ]
    return JSONResponse({**identity, "choices": wire_choices, "usage": _usage(usages, n)})


def _usage(usages: dict, n: int) -> dict:
    # Every prompt counts once however many choices it has, as OpenAI counts.
    prompt = sum(usage.prompt_tokens for index, usage in usages.items() if index % n == 0)
    completion = sum(usage.completion_tokens for usage in usages.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream(identity, first, chunks, echoes, n, want_logprobs, include_usage, resources):
    usages: dict[int, object] = {}
    offsets = [len(echo) for echo in echoes]

    def event(index: int, text: str, logprobs=None, finish_reason=None) -> dict:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"data": json.dumps({**identity, "choices": [choice]}, ensure_ascii=False)}

    try:
        for index, echo in enumerate(echoes):
            if echo:
                yield event(index, echo)
        pending = first
        while pending is not None:
            index, chunk = pending
            if isinstance(chunk, TokenDelta):
                logprobs = _legacy_logprobs(list(chunk.logprobs), offsets[index]) if want_logprobs else None
                offsets[index] += len(chunk.text)
                yield event(index, chunk.text, logprobs)
            elif isinstance(chunk, GenerationFinished):
                usages[index] = chunk.usage
                yield event(index, "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                            if want_logprobs else None, chunk.finish_reason)
            pending = await anext(chunks, None)
        if include_usage:
            yield {"data": json.dumps({**identity, "choices": [], "usage": _usage(usages, n)})}
        yield {"data": "[DONE]"}
    except ServerError as exc:
        yield {"data": json.dumps(error_body(exc))}
    finally:
        await chunks.aclose()
        await resources.aclose()
