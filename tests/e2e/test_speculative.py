"""Speculative decoding (prompt lookup, on by default) against the real server and both embedded models: greedy
answers are the ones decoding without it gives, grammars and stop strings still hold, drafts are counted in
/metrics, and a request can opt out.

"Without speculation" is the same server with `"speculative": false`, each variant asked twice so both run in the
same warm-prefix regime. llama.cpp's CPU kernels round differently for a one-token step than for a step of
several tokens of the same sequence (measured here: up to ~1 logit on a 130-token context), so a greedy pick may
flip where the top two candidates are that close, as between solo and batched decoding (test_batching.py); the
tests allow that and nothing else.
"""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from tests.greedy_agreement import assert_same_or_parted_at_near_tie
from tests.server_process import running_server
from tests.smollm2 import NO_END_TOKENS

CODE = """def area(width, height):
    return width * height


def perimeter(width, height):
    return 2 * (width + height)


def describe(width, height):
    return f"{width} x {height}: area {area(width, height)}, perimeter {perimeter(width, height)}"
"""
REWRITE = ("Rewrite this code, renaming `describe` to `summary`. Output only the code.\n\n" + CODE)
SMOLLM2_END_TOKENS = NO_END_TOKENS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server("--model-name", SMOLLM2_FILE, "--parallel", "2", "--n-ctx", "4096",
                        log_dir=tmp_path_factory.mktemp("spec-server")) as process:
        yield process


def _chat(server, model: str, speculative: bool, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": REWRITE}], "temperature": 0,
            "max_tokens": 120, "logprobs": True, "top_logprobs": 2, "speculative": speculative, **extra}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def _speculation_counters(server, model: str) -> tuple[float, float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    values = []
    for name in ("llm_speculative_drafted_tokens_total", "llm_speculative_accepted_tokens_total"):
        match = re.search(rf'^{name}{{model="{re.escape(model)}"}} (\S+)$', text, re.MULTILINE)
        values.append(float(match.group(1)) if match else 0.0)
    return values[0], values[1]


def _entries(answer: dict) -> list[dict]:
    return answer["choices"][0]["logprobs"]["content"]


@pytest.mark.parametrize("model", [SMOLLM2_FILE, GEMMA_FILE])
def test_greedy_answers_are_those_of_decoding_without_speculation(server, model):
    extra = {"logit_bias": SMOLLM2_END_TOKENS} if model == SMOLLM2_FILE else {"logit_bias": {"1": -100, "106": -100}}
    for _ in range(2):  # the second pair runs in the same (warm prefix) regime for both
        plain = _chat(server, model, False, **extra)
        drafted_before, accepted_before = _speculation_counters(server, model)
        speculative = _chat(server, model, True, **extra)
    drafted, accepted = (after - before for after, before in
                         zip(_speculation_counters(server, model), (drafted_before, accepted_before)))
    assert accepted > 10 and drafted >= accepted  # the rewrite copies its input: most drafts hold
    assert speculative["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"] == 120
    assert_same_or_parted_at_near_tie(_entries(plain), _entries(speculative), "speculative")


def test_a_request_that_opts_out_drafts_nothing_and_a_bad_value_is_a_400(server):
    before = _speculation_counters(server, SMOLLM2_FILE)
    _chat(server, SMOLLM2_FILE, False)
    assert _speculation_counters(server, SMOLLM2_FILE) == before
    bad = httpx.post(f"{server.base_url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "speculative": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "speculative"


def test_stop_strings_hold_while_speculating(server):
    plain = _chat(server, SMOLLM2_FILE, False, stop=["perimeter("])
    speculative = _chat(server, SMOLLM2_FILE, True, stop=["perimeter("])
    for answer in (plain, speculative):
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert "perimeter(" not in answer["choices"][0]["message"]["content"]
    assert speculative["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


def test_a_schema_holds_while_speculating_on_repetitive_json(server):
    schema = {"type": "object", "properties": {"rows": {"type": "array", "maxItems": 6, "items": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "size": {"type": "integer"}},
        "required": ["name", "size"], "additionalProperties": False}}}, "required": ["rows"],
        "additionalProperties": False}
    before = _speculation_counters(server, SMOLLM2_FILE)
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "List six boxes with a name and a size, as JSON rows."}],
        "temperature": 0, "max_tokens": 200,
        "response_format": {"type": "json_schema", "json_schema": {"name": "boxes", "schema": schema, "strict": True}},
    }, timeout=300).json()
    jsonschema.validate(json.loads(response["choices"][0]["message"]["content"]), schema)
    drafted, accepted = (a - b for a, b in zip(_speculation_counters(server, SMOLLM2_FILE), before))
    assert accepted > 0  # keys and punctuation repeat from row to row: drafts were checked under the grammar


def test_gemma_drafting_for_itself_gives_the_answers_of_decoding_without_speculation(tmp_path):
    """Self-drafting cannot be faster (the draft costs what the target does), but every draft token is the target's
    own greedy pick (up to rounding), so it shows the draft-model path end to end: high acceptance, unchanged answers."""
    flags = ("--model-name", GEMMA_FILE, "--draft-model", GEMMA_FILE, "--parallel", "2", "--n-ctx", "4096",
             "--no-install-embedded-models")
    with running_server(*flags, log_dir=tmp_path) as server:
        assert "Speculative decoding with the draft model" in server.log_path.read_text()
        extra = {"logit_bias": {"1": -100, "106": -100}}
        for _ in range(2):
            plain = _chat(server, GEMMA_FILE, False, **extra)
            before = _speculation_counters(server, GEMMA_FILE)
            speculative = _chat(server, GEMMA_FILE, True, **extra)
        drafted, accepted = (a - b for a, b in zip(_speculation_counters(server, GEMMA_FILE), before))
    # not all: the draft context decodes one token per step, the target checks several per step, and the two round
    # differently (see above); measured 80 %
    assert drafted > 50 and accepted >= 0.6 * drafted
    assert_same_or_parted_at_near_tie(_entries(plain), _entries(speculative), "speculative")
