"""Per-request observability: a request id (`x-request-id` honoured and returned), one log line per request
(model, engine, tokens, TTFT, total time, status), and Prometheus metrics at `/metrics`.

The middleware opens a `RequestRecord` for each request in a context variable; the chat path fills in the
model, tokens and first-token time as chunks pass (`observe`), so streams are measured to their last byte.
Gauges (queue depth, active sequences, loaded models and memory, prompt cache) are read from the registry at
scrape time by a collector, never kept in step by hand.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.tracing import GenerationTrace
from backends.base import GenerationFinished, TokenDelta, Usage, unfinished_usage

logger = logging.getLogger("llm_server.requests")


@dataclass
class RequestRecord:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    engine: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    drafted_tokens: int = 0  # speculative decoding
    accepted_tokens: int = 0
    first_token_at: float | None = None
    status: int = 0
    upstream_error: tuple[str, str] | None = None  # (upstream, code) when a remote upstream failed
    session: str | None = None  # the conversation it continues (api/pipeline/affinity.py)

    def count_unfinished(self, usage: Usage) -> None:
        """A generation the client left early: its prompt and the tokens it was sent still happened."""
        self.prompt_tokens = max(self.prompt_tokens, usage.prompt_tokens)
        self.completion_tokens += usage.completion_tokens


current_request: ContextVar[RequestRecord | None] = ContextVar("current_request", default=None)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llm_requests", "HTTP requests", ["route", "model", "status"], registry=self.registry)
        self.prompt_tokens = Counter("llm_prompt_tokens", "Prompt tokens", ["model"], registry=self.registry)
        self.completion_tokens = Counter("llm_completion_tokens", "Completion tokens", ["model"], registry=self.registry)
        self.reasoning_tokens = Counter("llm_reasoning_tokens", "Completion tokens spent thinking", ["model"],
                                        registry=self.registry)
        self.drafted_tokens = Counter("llm_speculative_drafted_tokens", "Tokens drafted by speculative decoding",
                                      ["model"], registry=self.registry)
        self.accepted_tokens = Counter("llm_speculative_accepted_tokens", "Drafted tokens the model confirmed (each "
                                       "a decode step saved)", ["model"], registry=self.registry)
        self.ttft = Histogram("llm_time_to_first_token_seconds", "Time to first token", ["model"], registry=self.registry,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.token_latency = Histogram("llm_time_per_output_token_seconds", "Time per output token after the first",
                                       ["model"], registry=self.registry,
                                       buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2))
        self.duration = Histogram("llm_request_duration_seconds", "Request duration", ["route"], registry=self.registry,
                                  buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.upstream_errors = Counter("llm_upstream_errors", "Errors from remote upstreams", ["upstream", "code"],
                                       registry=self.registry)

    def record(self, record: RequestRecord, route: str) -> None:
        model = record.model or ""
        self.requests.labels(route, model, str(record.status)).inc()
        if record.upstream_error is not None:
            self.upstream_errors.labels(*record.upstream_error).inc()
        self.duration.labels(route).observe(time.perf_counter() - record.started)
        if record.model is None:
            return
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.completion_tokens.labels(model).inc(record.completion_tokens)
        self.reasoning_tokens.labels(model).inc(record.reasoning_tokens)
        self.drafted_tokens.labels(model).inc(record.drafted_tokens)
        self.accepted_tokens.labels(model).inc(record.accepted_tokens)
        if record.first_token_at is not None:
            self.ttft.labels(model).observe(record.first_token_at - record.started)
            if record.completion_tokens > 1:
                per_token = (time.perf_counter() - record.first_token_at) / (record.completion_tokens - 1)
                self.token_latency.labels(model).observe(per_token)


class RegistryCollector:
    """Gauges read from the model registry when Prometheus scrapes."""

    def __init__(self, registry) -> None:
        self.model_registry = registry

    def collect(self):
        active = GaugeMetricFamily("llm_active_sequences", "Sequences generating", labels=["model"])
        queued = GaugeMetricFamily("llm_queue_depth", "Requests waiting for a slot", labels=["model"])
        memory = GaugeMetricFamily("llm_model_memory_bytes", "Estimated memory of a loaded model", labels=["model"])
        cache = GaugeMetricFamily("llm_prompt_cache", "Prompt cache counters", labels=["model", "counter"])
        kv = GaugeMetricFamily("llm_kv_cache_usage", "KV cells holding sequences' tokens, 0..1", labels=["model"])
        loaded = self.model_registry.loaded_models
        for model in loaded:
            active.add_metric([model.model_id], model.engine.active_sequences())
            queued.add_metric([model.model_id], model.engine.queued_requests())
            memory.add_metric([model.model_id], model.memory_bytes)
            if (usage := model.engine.kv_cache_usage()) is not None:
                kv.add_metric([model.model_id], usage.fraction)
            summary = model.engine.cache_summary() or {}
            for counter in ("disk_hits", "disk_misses", "restored_tokens", "saves", "save_errors", "bad_entries"):
                if counter in summary:
                    cache.add_metric([model.model_id, counter], summary[counter])
        crashes = CounterMetricFamily("llm_engine_crashes", "Times a model's engine (its worker process) died; each "
                                      "time its next request started a fresh one", labels=["model"])
        for model_id, count in sorted(self.model_registry.crashes.items()):
            crashes.add_metric([model_id], count)
        yield crashes
        yield GaugeMetricFamily("llm_loaded_models", "Models loaded", value=len(loaded))
        yield from (active, queued, memory, cache, kv)


class KeyUsageCollector:
    """Per-key usage from the quota book, labelled with the key's label (never the key itself)."""

    def __init__(self, quotas) -> None:
        self.quotas = quotas

    def collect(self):
        requests = CounterMetricFamily("llm_key_requests", "Requests admitted per key", labels=["key"])
        tokens = CounterMetricFamily("llm_key_tokens", "Tokens used per key", labels=["key", "kind"])
        errors = CounterMetricFamily("llm_key_errors", "Requests that failed per key", labels=["key"])
        limited = CounterMetricFamily("llm_key_rate_limited", "Requests refused by a quota (429)", labels=["key"])
        in_flight = GaugeMetricFamily("llm_key_in_flight", "Requests in flight per key", labels=["key"])
        for label, usage in sorted(self.quotas.keys.items()):
            requests.add_metric([label], usage.requests)
            tokens.add_metric([label, "prompt"], usage.prompt_tokens)
            tokens.add_metric([label, "completion"], usage.completion_tokens)
            errors.add_metric([label], usage.errors)
            limited.add_metric([label], usage.rate_limited)
            in_flight.add_metric([label], usage.in_flight)
        yield from (requests, tokens, errors, limited, in_flight)


async def observe(chunks: AsyncIterator, model_id: str, engine: str) -> AsyncIterator:
    """Pass a request's (choice index, chunk) pairs through, noting its first token and token counts."""
    record = current_request.get()
    if record is not None:
        record.model, record.engine = model_id, engine
    traced = GenerationTrace(model_id, record.path if record is not None else "")
    try:
        async for item in chunks:
            chunk = item[1]
            if isinstance(chunk, TokenDelta):
                traced.first_token()
            elif isinstance(chunk, GenerationFinished):
                traced.finished(chunk.finish_reason, chunk.usage)
            if record is not None:
                if isinstance(chunk, TokenDelta) and record.first_token_at is None:
                    record.first_token_at = time.perf_counter()
                elif isinstance(chunk, GenerationFinished):
                    record.prompt_tokens = chunk.usage.prompt_tokens
                    record.completion_tokens += chunk.usage.completion_tokens
                    record.reasoning_tokens += chunk.usage.reasoning_tokens
                    record.drafted_tokens += chunk.usage.drafted_tokens
                    record.accepted_tokens += chunk.usage.accepted_tokens
            yield item
    finally:
        await chunks.aclose()
        traced.write()


def note_model(model_id: str, engine: str) -> None:
    record = current_request.get()
    if record is not None:
        record.model, record.engine = model_id, engine


def note_upstream_error(upstream: str, code: str) -> None:
    record = current_request.get()
    if record is not None:
        record.upstream_error = (upstream, code)


_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, json_logs: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.json_logs = json_logs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else f"req_{uuid.uuid4().hex[:16]}"
        record = RequestRecord(request_id, scope["method"], scope["path"])
        record.session = Headers(scope=scope).get("x-session-id")  # (as given: api/pipeline/affinity.py reads it)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        try:
            with _current(record):
                await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route").path if scope.get("route") is not None else "unmatched"
            if route != "/metrics":
                self.metrics.record(record, route)
                log_request(record, self.json_logs)


def log_request(record: RequestRecord, json_logs: bool) -> None:
    total = time.perf_counter() - record.started
    ttft = None if record.first_token_at is None else round(record.first_token_at - record.started, 4)
    fields = {"request_id": record.request_id, "method": record.method, "path": record.path,
              "status": record.status, "model": record.model, "engine": record.engine,
              "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
              "reasoning_tokens": record.reasoning_tokens or None,
              "drafted_tokens": record.drafted_tokens or None, "accepted_tokens": record.accepted_tokens or None,
              "ttft_s": ttft, "total_s": round(total, 4), "session": record.session}
    if json_logs:
        logger.info(json.dumps(fields))
    else:
        logger.info(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None))



@contextmanager
def recorded_request(metrics: Metrics, json_logs: bool, method: str, path: str, route: str,
                     session: str | None = None) -> Iterator[RequestRecord]:
    """A unit of work that is not an HTTP request of its own (one `response.create` on a WebSocket), counted and
    logged as one: the same metrics, the same log line, its generation's tokens noted on the record."""
    record = RequestRecord(f"req_{uuid.uuid4().hex[:16]}", method, path, session=session)
    try:
        with _current(record):
            yield record
    finally:
        metrics.record(record, route)
        log_request(record, json_logs)


@contextmanager
def _current(record: RequestRecord) -> Iterator[RequestRecord]:
    """`record` is the request being served (what generations note their tokens on) while the block runs; a
    failure that set no status is a 500."""
    token = current_request.set(record)
    unfinished_token = unfinished_usage.set(record.count_unfinished)
    try:
        yield record
    except BaseException:
        record.status = record.status or 500
        raise
    finally:
        current_request.reset(token)
        unfinished_usage.reset(unfinished_token)
