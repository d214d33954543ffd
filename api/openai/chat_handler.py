"""Serves one chat completion request through the one serving path: the chat writer turns engine chunks into
OpenAI chat completion chunks (streamed) or one chat completion (whole)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from api.openai.chat_output import ChoiceAccumulator, ChunkBuilder, CompletionIdentity, whole_completion
from api.openai.stream_writer import OpenAIStreamWriter
from api.pipeline.choice_output import ChoiceOutput
from api.pipeline.prepare import check_request_limits, log_unknown_fields, prepare_chat
from api.pipeline.reasoning_plan import server_reasoning
from api.protocol import ChatCompletionRequest
from api.serving import LocalRun, Payloads, client_body, generation_chunks, requested_tokens, serve
from backends.base import GenerationChunk, GenerationFinished, TokenDelta
from backends.registry import LoadedModel, ModelRegistry
from settings import Settings
from tenants.keys import Tenant


async def handle_chat_completion(
    body: ChatCompletionRequest, request: Request, registry: ModelRegistry, tenant: Tenant, settings: Settings
) -> Response:
    log_unknown_fields(body)
    check_request_limits(body, settings.max_tokens_limit, settings.max_messages)

    async def start_local(model: LoadedModel) -> LocalRun:
        prepared = prepare_chat(body, model.renderer, model.engine.capabilities,
                                registry.generation_defaults(model.model_id), server_reasoning(settings))
        outputs = [prepared.output() for _ in prepared.requests]
        writer = ChatWriter(body, CompletionIdentity(model=model.model_id), outputs, prepared.reasoning_format)
        return LocalRun(writer, generation_chunks(model, prepared.requests, settings, tenant, body), bool(body.stream))

    sent = client_body(body)
    return await serve(request, registry, body.model, tenant=tenant,
                       request_tokens=requested_tokens(sent, settings.default_max_tokens), start_local=start_local,
                       relay_path="chat/completions", relay_body=lambda: sent)


class ChatWriter(OpenAIStreamWriter):
    def __init__(self, body: ChatCompletionRequest, identity: CompletionIdentity, outputs: list[ChoiceOutput],
                 reasoning_format: str = "none") -> None:
        self.outputs = outputs
        self.want_logprobs = bool(body.logprobs)
        self.identity = identity
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.builder = ChunkBuilder(identity, include_usage=include_usage, want_logprobs=self.want_logprobs,
                                    reasoning_format=reasoning_format)
        self.streaming = bool(body.stream)
        self.choices = [ChoiceAccumulator(output, reasoning_format) for output in outputs]
        self.usages = {}

    def start(self) -> Payloads:
        return [self.builder.role(index) for index in range(len(self.outputs))]

    def add(self, index: int, chunk: GenerationChunk) -> Payloads:
        if not self.streaming:
            self.choices[index].add(chunk)
            return ()
        output = self.outputs[index]
        if isinstance(chunk, TokenDelta):
            return self.builder.events(index, output.read(chunk.text), chunk.logprobs, output.plan.legacy)
        if isinstance(chunk, GenerationFinished):
            self.usages[index] = chunk.usage
            return [*self.builder.events(index, output.finish(), (), output.plan.legacy),
                    self.builder.finish(index, output.finish_reason(chunk.finish_reason))]
        return ()

    def usage_chunk(self) -> dict | None:
        return self.builder.usage([self.usages[i] for i in sorted(self.usages)]) if self.builder.include_usage \
            else None

    def whole(self) -> dict:
        completion = whole_completion(self.identity, self.choices, want_logprobs=self.want_logprobs).model_dump()
        for choice in completion["choices"]:  # reasoning fields only where there was reasoning
            for name in ("reasoning_content", "reasoning"):
                if choice["message"].get(name) is None:
                    choice["message"].pop(name, None)
        return completion
