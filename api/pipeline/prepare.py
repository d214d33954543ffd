"""Turns a chat completion request into what an engine takes: a rendered prompt and sampling settings.

Every field is either honoured or refused with a clear error here; nothing the client sent is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from api.pipeline.choice_output import ChoiceOutput
from api.pipeline.reasoning_plan import (
    ReasoningPlan,
    ReasoningRequest,
    ServerReasoning,
    plan_reasoning,
    template_variables,
)
from api.protocol import ChatCompletionRequest
from backends.base import EngineCapabilities, GenerationRequest, GrammarSpec, SamplingParams
from backends.catalog import GenerationDefaults
from chat.grammars import JSON_OBJECT_SCHEMA, json_schema_grammar, tool_call_grammar
from chat.media import MediaPart
from chat.messages import MediaSink, to_template_messages
from chat.templates import ChatPromptRenderer
from chat.tool_formats import HERMES, ToolCallFormat
from chat.tools import ToolPlan, build_tool_plan
from errors import InvalidRequest

logger = logging.getLogger(__name__)

DEFAULT_SAMPLING = SamplingParams()
NO_DEFAULTS = GenerationDefaults()
DEFAULT_REASONING = ServerReasoning()


def log_unknown_fields(request: ChatCompletionRequest) -> None:
    if request.model_extra:
        logger.debug("Ignoring fields this server does not use: %s", sorted(request.model_extra))


def check_request_limits(request: ChatCompletionRequest, max_tokens_limit: int, max_messages: int) -> None:
    """The operator's per-request caps (`--max-tokens-limit`, `--max-messages`)."""
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(request, field)
        if max_tokens_limit and value is not None and value > max_tokens_limit:
            raise InvalidRequest(f"{field} may be at most {max_tokens_limit} on this server.", param=field)
    if len(request.messages) > max_messages:
        raise InvalidRequest(f"At most {max_messages} messages per request on this server.", param="messages")


def _refuse_unsupported(request: ChatCompletionRequest, capabilities: EngineCapabilities) -> None:
    if (request.tools or request.functions) and not capabilities.tools:
        raise InvalidRequest("This model does not support tool calling.", param="tools")
    if request.response_format and request.response_format.type != "text" and not capabilities.json_schema:
        raise InvalidRequest(
            f"response_format type '{request.response_format.type}' is not supported by this model.",
            param="response_format",
        )
    if request.grammar is not None and not capabilities.grammar:
        raise InvalidRequest("This model does not accept a GBNF grammar.", param="grammar")
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest("'logprobs' must be true when 'top_logprobs' is set.", param="top_logprobs")
    if request.logprobs and not capabilities.logprobs:
        raise InvalidRequest("This model does not return logprobs.", param="logprobs")
    if (request.top_logprobs or 0) > capabilities.max_top_logprobs:
        raise InvalidRequest(
            f"top_logprobs may be at most {capabilities.max_top_logprobs} for this model.", param="top_logprobs"
        )


def _media_sink(capabilities: EngineCapabilities, collected: list[MediaPart]) -> MediaSink | None:
    """Where a model that takes images or audio collects a request's media parts (None: it takes neither)."""
    if not (capabilities.vision or capabilities.audio):
        return None

    def take(part: MediaPart) -> None:
        if not (capabilities.vision if part.kind == "image" else capabilities.audio):
            takes = "images" if capabilities.vision else "audio"
            raise InvalidRequest(f"This model takes {takes}, not {part.kind}.", param=part.param)
        collected.append(part)

    return take


def _logit_bias(request: ChatCompletionRequest) -> dict[int, float]:
    items = (request.logit_bias or {}).items()
    bad = [key for key, _ in items if not key.strip().lstrip("-").isdigit()]
    if bad:  # every offending key, not just the first
        raise InvalidRequest(f"logit_bias keys must be token ids; got {', '.join(repr(k) for k in bad)}.",
                             param="logit_bias")
    return {int(key): float(value) for key, value in items}


def _pick(*values):
    """The first value that is set: the request's, then the model's default, then the server's."""
    return next((value for value in values if value is not None), None)


def sampling_params(
    request: ChatCompletionRequest, choice_index: int = 0, defaults: GenerationDefaults = NO_DEFAULTS
) -> SamplingParams:
    """Request values over the model's defaults over the server's. Each extra choice gets the next seed."""
    seed = None if request.seed is None else request.seed + choice_index
    fields = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
    chosen = {name: _pick(getattr(request, name), getattr(defaults, name), getattr(DEFAULT_SAMPLING, name))
              for name in fields}
    return SamplingParams(**chosen, seed=seed, logit_bias=_logit_bias(request))


def stop_strings(request: ChatCompletionRequest, defaults: GenerationDefaults = NO_DEFAULTS) -> tuple[str, ...]:
    """The request's stop strings, and the model's own (`defaults.stop` in models.yaml, as Ollama's PARAMETER
    stop): both apply."""
    asked = () if request.stop is None else (request.stop,) if isinstance(request.stop, str) else tuple(request.stop)
    return tuple(dict.fromkeys(asked + tuple(defaults.stop or ())))


@dataclass(frozen=True)
class PreparedChat:
    """What the engine runs (one request per choice) and how to read its output back."""

    requests: list[GenerationRequest]
    tool_plan: ToolPlan
    tool_call_format: ToolCallFormat = HERMES
    reasoning: ReasoningPlan | None = None  # None: the model does not reason

    def output(self) -> ChoiceOutput:
        """A reader for one choice's generated text."""
        splitter = self.reasoning.splitter() if self.reasoning else None
        return ChoiceOutput(self.tool_plan, self.tool_call_format, splitter)

    @property
    def reasoning_format(self) -> str:
        return self.reasoning.output_format if self.reasoning else "none"


def tool_plan(request: ChatCompletionRequest) -> ToolPlan:
    dump = lambda items: [item.model_dump(by_alias=True, exclude_none=True) for item in items or []]  # noqa: E731
    choice = request.tool_choice.model_dump() if hasattr(request.tool_choice, "model_dump") else request.tool_choice
    legacy_choice = (
        request.function_call.model_dump() if hasattr(request.function_call, "model_dump") else request.function_call
    )
    return build_tool_plan(
        dump(request.tools), choice, request.parallel_tool_calls, dump(request.functions), legacy_choice
    )


def _output_grammar(request: ChatCompletionRequest, plan: ToolPlan, call_format: ToolCallFormat) -> GrammarSpec | None:
    """At most one constraint: a raw grammar, a tool-call grammar or a response_format schema."""
    response_format = request.response_format
    wants_json = response_format is not None and response_format.type != "text"
    if sum([request.grammar is not None, plan.active, wants_json]) > 1:
        raise InvalidRequest("Use only one of 'grammar', 'tools' and a JSON 'response_format'.", param="response_format")
    if request.grammar is not None:
        return GrammarSpec(request.grammar)
    if plan.active:
        return tool_call_grammar(plan, call_format, lazy=plan.mode == "auto")
    if not wants_json:
        return None
    if response_format.type == "json_object":
        return json_schema_grammar(JSON_OBJECT_SCHEMA)
    schema = response_format.json_schema.schema_ if response_format.json_schema else None
    if not schema:
        raise InvalidRequest("response_format json_schema needs a 'schema'.", param="response_format.json_schema")
    strict = bool(response_format.json_schema and response_format.json_schema.strict)
    return json_schema_grammar(schema, "response_format.json_schema.schema", strict)


def reasoning_request(request: ChatCompletionRequest) -> ReasoningRequest:
    return ReasoningRequest(effort=request.reasoning_effort, template_kwargs=request.chat_template_kwargs,
                            output_format=request.reasoning_format, budget=request.reasoning_budget)


def _render_prompt(
    request: ChatCompletionRequest, renderer: ChatPromptRenderer, plan: ToolPlan, add_generation_prompt: bool = True,
    variables: dict[str, Any] | None = None, media: MediaSink | None = None,
) -> str:
    if request.continue_final_message and add_generation_prompt:
        prompt = _render_prompt(request, renderer, plan, False, variables, media)
        return continued_prompt(prompt, _final_assistant_text(request))
    native = plan.active and renderer.supports_tools
    messages = to_template_messages(
        [m.model_dump() for m in request.messages], native_tools=native, call_format=renderer.tool_call_format,
        media=media,
    )
    tools = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in plan.tools]
    if native:
        return renderer.render(messages, tools=[{"type": "function", "function": t} for t in tools],
                               add_generation_prompt=add_generation_prompt, extra=variables)
    if plan.active:
        instructions = renderer.render_tool_prompt(tools, plan.mode, plan.parallel)
        if messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{instructions}"}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
    return renderer.render(messages, add_generation_prompt=add_generation_prompt, extra=variables)


def _final_assistant_text(request: ChatCompletionRequest) -> str:
    final = request.messages[-1]
    content = final.content
    text = content if isinstance(content, str) else "".join(
        part.text for part in content or [] if getattr(part, "type", None) == "text")
    if final.role != "assistant" or getattr(final, "tool_calls", None) or not text.strip():
        raise InvalidRequest("continue_final_message needs the last message to be an assistant's, with text and no "
                             "tool calls: the start of the answer to continue.", param="continue_final_message")
    return text


def continued_prompt(prompt: str, final: str) -> str:
    """The rendered conversation cut right after the final message's text, so the model continues it (what
    transformers' `continue_final_message` does). Templates often trim a message: the text is looked for without
    its surrounding whitespace, and its trailing whitespace kept only where the template kept it."""
    core = final.strip()
    at = prompt.rfind(core)
    if at < 0:
        raise InvalidRequest("The model's chat template does not render the final assistant message as written, so it "
                             "cannot be continued.", param="continue_final_message")
    kept = final.lstrip()
    end = at + (len(kept) if prompt[at:at + len(kept)] == kept else len(core))
    return prompt[:end]


def render_for_cache(
    request: ChatCompletionRequest, renderer: ChatPromptRenderer, defaults: GenerationDefaults = NO_DEFAULTS,
    capabilities: EngineCapabilities | None = None,
) -> tuple[str, str]:
    """(the prompt a chat request with these messages and tools evaluates, the same without generation prompt).
    With the model's `capabilities`, media parts it takes render as their markers (`/apply-template`)."""
    plan = tool_plan(request)
    variables = template_variables(reasoning_request(request), defaults, renderer)
    sink = _media_sink(capabilities, []) if capabilities is not None else None
    return (_render_prompt(request, renderer, plan, variables=variables, media=sink),
            _render_prompt(request, renderer, plan, add_generation_prompt=False, variables=variables, media=sink))


def prepare_chat(
    request: ChatCompletionRequest,
    renderer: ChatPromptRenderer,
    capabilities: EngineCapabilities,
    defaults: GenerationDefaults = NO_DEFAULTS,
    server_reasoning: ServerReasoning = DEFAULT_REASONING,
) -> PreparedChat:
    """One engine request per choice (`n`), all sharing the rendered prompt and output constraint."""
    _refuse_unsupported(request, capabilities)
    plan = tool_plan(request)
    call_format = renderer.tool_call_format
    grammar = _output_grammar(request, plan, call_format)
    wanted = reasoning_request(request)
    variables = template_variables(wanted, defaults, renderer)
    media: list[MediaPart] = []
    prompt = _render_prompt(request, renderer, plan, variables=variables, media=_media_sink(capabilities, media))
    reasoning = plan_reasoning(wanted, renderer, prompt, variables, defaults, server_reasoning)
    max_tokens = _pick(request.max_completion_tokens, request.max_tokens, defaults.max_tokens)
    top_logprobs = (request.top_logprobs or 0) if request.logprobs else None
    preserved = call_format.preserved_tokens if plan.active else ()
    requests = [
        GenerationRequest(
            prompt=prompt,
            sampling=sampling_params(request, index, defaults),
            max_tokens=max_tokens,
            stop=stop_strings(request, defaults),
            top_logprobs=top_logprobs,
            grammar=reasoning.grammar(grammar) if reasoning else grammar,
            preserved_tokens=preserved + (reasoning.preserved_tokens if reasoning else ()),
            reasoning=reasoning.control() if reasoning else None,
            media=tuple(media),
        )
        for index in range(request.n or 1)
    ]
    return PreparedChat(requests=requests, tool_plan=plan, tool_call_format=call_format, reasoning=reasoning)
