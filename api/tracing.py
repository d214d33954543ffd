"""OpenTelemetry tracing, off unless `--otlp-traces-endpoint` names an OTLP/HTTP collector (vLLM's flag).

FastAPI itself opens the request's server span once a tracer provider is set (joining a caller's `traceparent`),
so this module sets one up and adds what an inference server knows, as children of that span:
- `admission` (the quota check and the wait for the model, `model load` inside it when the request loads one);
- per generation, `{operation} {model}` with the GenAI semantic-convention attributes (model, tokens in and out,
  cached tokens, finish reasons) and vLLM's latency ones (time to first token, time in queue, end to end), and
  under it `queue`, `prompt evaluation` and `decoding`, laid out from the times the engine reported;
- a relayed request carries `traceparent` upstream; JSON log lines carry the trace and span ids (server.py).
Spans are batched to the collector off the request path (the SDK's BatchSpanProcessor).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from opentelemetry import propagate, trace

from backends.base import Usage

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("llm-server")  # a proxy: real spans once configure() set a provider, no-ops before

OPERATIONS = {"/v1/chat/completions": "chat", "/chat/completions": "chat", "/v1/messages": "chat",
              "/v1/responses": "chat", "/v1/completions": "text_completion", "/completions": "text_completion"}


def configure(endpoint: str | None, service_name: str = "llm-server"):
    """Send spans to `endpoint` (e.g. http://collector:4318/v1/traces); returns the provider to shut down at exit,
    or None when tracing is off."""
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    logger.info("Tracing: spans go to %s (OTLP/HTTP)", endpoint)
    return provider


def enabled() -> bool:
    return trace.get_current_span().get_span_context().is_valid


@contextlib.contextmanager
def span(name: str, **attributes) -> Iterator[None]:
    """A child span of the current one, where tracing is on (nothing to do otherwise)."""
    if not enabled():
        yield
        return
    with tracer.start_as_current_span(name, attributes=attributes):
        yield


def propagation_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for a request relayed upstream; {} when tracing is off."""
    headers: dict[str, str] = {}
    if enabled():
        propagate.inject(headers)
    return headers


@dataclass
class GenerationTrace:
    """A request's generations as they pass (api/observability.observe), written out as spans at the end."""

    model: str
    path: str
    started_ns: int = field(default_factory=time.time_ns)
    first_token_ns: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    queued_seconds: float = 0.0
    finish_reasons: list[str] = field(default_factory=list)

    def first_token(self) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = time.time_ns()

    def finished(self, reason: str, usage: Usage) -> None:
        self.input_tokens = usage.prompt_tokens
        self.output_tokens += usage.completion_tokens
        self.cached_tokens = max(self.cached_tokens, usage.cached_tokens)
        self.queued_seconds = max(self.queued_seconds, usage.queued_seconds)
        self.finish_reasons.append(reason)

    def write(self) -> None:
        """The generation span and its phases, under the current span (a no-op when tracing is off)."""
        if not enabled():
            return
        try:
            self._write()
        except Exception:  # tracing must never fail the request it describes
            logger.exception("Could not write a generation's spans")

    def _write(self) -> None:
        ended = time.time_ns()
        operation = OPERATIONS.get(self.path, "chat")
        attributes = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": "llm-server",
            "gen_ai.request.model": self.model, "gen_ai.response.model": self.model,
            "gen_ai.usage.input_tokens": self.input_tokens, "gen_ai.usage.output_tokens": self.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": self.cached_tokens,
            "gen_ai.response.finish_reasons": self.finish_reasons,
            "gen_ai.latency.time_in_queue": self.queued_seconds,
            "gen_ai.latency.e2e": (ended - self.started_ns) / 1e9,
        }
        if self.first_token_ns is not None:
            attributes["gen_ai.latency.time_to_first_token"] = (self.first_token_ns - self.started_ns) / 1e9
        generation = tracer.start_span(f"{operation} {self.model}", start_time=self.started_ns, attributes=attributes)
        with trace.use_span(generation, end_on_exit=False):
            evaluated_from = min(ended, self.started_ns + int(self.queued_seconds * 1e9))
            tracer.start_span("queue", start_time=self.started_ns).end(end_time=evaluated_from)
            first = self.first_token_ns or ended
            tracer.start_span("prompt evaluation", start_time=evaluated_from, attributes={
                "gen_ai.usage.input_tokens": self.input_tokens,
                "gen_ai.usage.cache_read.input_tokens": self.cached_tokens}).end(end_time=max(first, evaluated_from))
            if self.first_token_ns is not None:
                tracer.start_span("decoding", start_time=first, attributes={
                    "gen_ai.usage.output_tokens": self.output_tokens}).end(end_time=ended)
        generation.end(end_time=ended)
