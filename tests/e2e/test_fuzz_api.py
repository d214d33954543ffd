"""Fuzzes the HTTP API with schemathesis against our own OpenAPI schema: whatever arrives, the server never
answers 5xx, and every error is in OpenAI's shape (Anthropic's on the Messages API). Bounded: a few examples per operation, short completions."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server_process import running_server


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    flags = ("--parallel", "4", "--n-ctx", "4096", "--default-max-tokens", "8", "--max-tokens-limit", "16",
             "--max-loaded-models", "1")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("fuzz-server")) as server:
        yield server


def check_operation(operation, examples: int) -> None:
    @given(case=operation.as_strategy())
    # derandomize: the same examples every run, so CI is reproducible (raise max_examples locally to explore).
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def check(case):
        response = case.call(timeout=120)
        if case.path != "/readyz":  # (a readiness probe's 503 is its answer, "not ready": its shape is checked below)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
        if response.status_code >= 400 and case.path.startswith("/v1/messages"):  # Anthropic's API, its shape
            body = response.json()
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, response.text
        elif response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], response.text

    check()


@pytest.mark.timeout(900)
def test_no_5xx_and_openai_shaped_errors(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        check_operation(operation, examples=25)
