"""Turns a chat completion request into what an engine takes: a rendered prompt and sampling settings.

Every field is either honoured or refused with a clear error here; nothing the client sent is dropped.
"""

from __future__ import annotations

import logging

from api.protocol import ChatCompletionRequest
from backends.base import EngineCapabilities, GenerationRequest, SamplingParams
from chat.messages import to_template_messages
from chat.templates import ChatPromptRenderer
from errors import InvalidRequest

logger = logging.getLogger(__name__)

DEFAULT_SAMPLING = SamplingParams()


def log_unknown_fields(request: ChatCompletionRequest) -> None:
    if request.model_extra:
        logger.debug("Ignoring fields this server does not use: %s", sorted(request.model_extra))


def _refuse_unsupported(request: ChatCompletionRequest, capabilities: EngineCapabilities) -> None:
    if request.tools and request.tool_choice != "none" and not capabilities.tools:
        raise InvalidRequest("This model does not support tool calling yet.", param="tools")
    if request.response_format and request.response_format.type != "text" and not capabilities.json_schema:
        raise InvalidRequest(
            f"response_format type '{request.response_format.type}' is not supported by this model yet.",
            param="response_format",
        )
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest("'logprobs' must be true when 'top_logprobs' is set.", param="top_logprobs")
    if request.logprobs and not capabilities.logprobs:
        raise InvalidRequest("This model does not return logprobs.", param="logprobs")
    if (request.top_logprobs or 0) > capabilities.max_top_logprobs:
        raise InvalidRequest(
            f"top_logprobs may be at most {capabilities.max_top_logprobs} for this model.", param="top_logprobs"
        )


def _logit_bias(request: ChatCompletionRequest) -> dict[int, float]:
    bias = {}
    for key, value in (request.logit_bias or {}).items():
        try:
            bias[int(key)] = float(value)
        except ValueError:
            raise InvalidRequest(f"logit_bias keys must be token ids; got '{key}'.", param="logit_bias") from None
    return bias


def _pick(value, default):
    return default if value is None else value


def sampling_params(request: ChatCompletionRequest, choice_index: int = 0) -> SamplingParams:
    """Request values over server defaults. Each extra choice gets the next seed so n>1 choices differ."""
    seed = None if request.seed is None else request.seed + choice_index
    return SamplingParams(
        temperature=_pick(request.temperature, DEFAULT_SAMPLING.temperature),
        top_p=_pick(request.top_p, DEFAULT_SAMPLING.top_p),
        top_k=_pick(request.top_k, DEFAULT_SAMPLING.top_k),
        min_p=_pick(request.min_p, DEFAULT_SAMPLING.min_p),
        repeat_penalty=_pick(request.repeat_penalty, DEFAULT_SAMPLING.repeat_penalty),
        presence_penalty=_pick(request.presence_penalty, DEFAULT_SAMPLING.presence_penalty),
        frequency_penalty=_pick(request.frequency_penalty, DEFAULT_SAMPLING.frequency_penalty),
        seed=seed,
        logit_bias=_logit_bias(request),
    )


def stop_strings(request: ChatCompletionRequest) -> tuple[str, ...]:
    if request.stop is None:
        return ()
    return (request.stop,) if isinstance(request.stop, str) else tuple(request.stop)


def build_generation_requests(
    request: ChatCompletionRequest, renderer: ChatPromptRenderer, capabilities: EngineCapabilities
) -> list[GenerationRequest]:
    """One engine request per choice (`n`), all sharing the rendered prompt."""
    _refuse_unsupported(request, capabilities)
    messages = to_template_messages([m.model_dump() for m in request.messages])
    prompt = renderer.render(messages, add_generation_prompt=True)
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    top_logprobs = (request.top_logprobs or 0) if request.logprobs else None
    return [
        GenerationRequest(
            prompt=prompt,
            sampling=sampling_params(request, index),
            max_tokens=max_tokens,
            stop=stop_strings(request),
            top_logprobs=top_logprobs,
        )
        for index in range(request.n or 1)
    ]
