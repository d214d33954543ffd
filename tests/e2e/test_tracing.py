"""OpenTelemetry tracing (`--otlp-traces-endpoint`, api/tracing.py) against an OTLP/HTTP receiver the test runs:
what arrives is decoded with the official protobuf types (opentelemetry-proto). One trace per request, joined to
the caller's `traceparent`, with the GenAI attributes and the phases as spans; the trace id in the JSON log line;
`traceparent` carried to a remote model's upstream."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from tests.fake_upstream import FakeUpstream
from tests.server_process import running_server, strict_client
from tests.smollm2 import NO_END_TOKENS


class OtlpReceiver:
    """Collects the spans POSTed to /v1/traces: [{name, trace_id, span_id, parent_span_id, attributes, ...}]."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                    for scope in resource.scope_spans:
                        receiver.spans.extend(_span(span, service) for span in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(b"")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, *, until: set[str], timeout: float = 20) -> dict[str, dict]:
        """The spans of one trace by name, once every name in `until` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = {span["name"]: span for span in list(self.spans) if span["trace_id"] == trace_id}
            if until <= set(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def _value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind)


def _span(span, service: str) -> dict:
    return {"name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
            "parent_span_id": span.parent_span_id.hex(), "service": service, "start": span.start_time_unix_nano,
            "end": span.end_time_unix_nano, "attributes": {a.key: _value(a.value) for a in span.attributes}}


@pytest.fixture(scope="module")
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(receiver, upstream, tmp_path_factory):
    flags = ("--model-name", SMOLLM2_FILE, "--otlp-traces-endpoint", receiver.url, "--log-format", "json",
             "--upstream", f"fake={upstream.base_url}")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("tracing"),
                        env={"OTEL_BSP_SCHEDULE_DELAY": "100"}) as process:  # (spans leave every 0.1 s, not 5 s)
        yield process


def ancestors(span: dict, spans: dict[str, dict]) -> list[str]:
    """The names of the spans above `span`, nearest first (FastAPI's own operation spans among them)."""
    by_id = {s["span_id"]: s for s in spans.values()}
    names = []
    while (span := by_id.get(span["parent_span_id"])) is not None:
        names.append(span["name"])
    return names


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def test_a_request_is_one_trace_with_its_generation_and_phases(server, receiver):
    trace_id, caller, header = traceparent()
    stream = strict_client(f"{server.base_url}/v1").chat.completions.create(
        model=SMOLLM2_FILE, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=0,
        logit_bias=NO_END_TOKENS, stream=True, stream_options={"include_usage": True},
        extra_headers={"traceparent": header})
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    generation_name = f"chat {SMOLLM2_FILE}"
    phases = {"queue", "prompt evaluation", "decoding"}
    spans = receiver.trace(trace_id, until={"POST /v1/chat/completions", "admission", "model lease", generation_name}
                           | phases)
    request = spans["POST /v1/chat/completions"]
    assert request["parent_span_id"] == caller and request["service"] == "llm-server"  # the caller's trace, joined
    # (between them, FastAPI's own span of the endpoint function)
    assert ancestors(spans["admission"], spans)[-1] == ancestors(spans[generation_name], spans)[-1] == request["name"]
    generation = spans[generation_name]
    attributes = generation["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == SMOLLM2_FILE
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == \
        (usage.prompt_tokens, usage.completion_tokens)
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == usage.prompt_tokens_details.cached_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert 0 < attributes["gen_ai.latency.time_to_first_token"] < attributes["gen_ai.latency.e2e"]
    assert attributes["gen_ai.latency.time_in_queue"] >= 0
    for name in phases:  # under the generation, in order, within it
        assert spans[name]["parent_span_id"] == generation["span_id"], name
    assert generation["start"] <= spans["queue"]["start"] <= spans["queue"]["end"] \
        <= spans["prompt evaluation"]["start"] <= spans["prompt evaluation"]["end"] <= spans["decoding"]["start"] \
        <= spans["decoding"]["end"] <= generation["end"]

    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line["logger"] == "llm_server.requests"
              and json.loads(line["message"])["path"] == "/v1/chat/completions"]
    assert logged and logged[-1]["trace_id"] == trace_id  # the log line finds the trace


def test_a_model_loaded_for_a_request_is_a_span_of_its_trace(server, receiver):
    trace_id, _, header = traceparent()
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"traceparent": header}, timeout=120,
                        json={"model": GEMMA_FILE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert answer.status_code == 200, answer.text
    spans = receiver.trace(trace_id, until={"model load", "model lease"})
    assert spans["model load"]["attributes"]["gen_ai.request.model"] == GEMMA_FILE
    assert ancestors(spans["model load"], spans)[0] == "model lease"
    assert spans["model load"]["end"] - spans["model load"]["start"] > 1_000_000  # (a real load: over 1 ms)


def test_a_relayed_request_carries_the_trace_upstream(server, receiver, upstream):
    trace_id, caller, header = traceparent()
    deadline = time.monotonic() + 20
    while "fake/echo" not in [m["id"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]]:
        assert time.monotonic() < deadline  # (discovery runs in the background)
        time.sleep(0.1)
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"traceparent": header}, timeout=30,
                        json={"model": "fake/echo", "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 200, answer.text
    sent = [r["headers"] for r in upstream.record.requests if r["path"] == "/v1/chat/completions"][-1]
    version, sent_trace, sent_parent, _ = sent["traceparent"].split("-")
    assert sent_trace == trace_id and sent_parent != caller  # the same trace, under our span
    spans = receiver.trace(trace_id, until={"POST /v1/chat/completions"})
    assert sent_parent in {s["span_id"] for s in spans.values()}  # one of our spans of that request
