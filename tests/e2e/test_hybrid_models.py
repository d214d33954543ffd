"""Hybrid models (recurrent layers beside attention) served as users run them: tiny random Qwen3.5 (Gated DeltaNet),
Granite 4 (Mamba2) and LFM2 (short convolutions), built and converted by tests/tiny_hybrids.py with llama.cpp's own
converter and their families' real chat templates.

Their recurrent state cannot be cut back, so prefix reuse goes through state checkpoints (backends/llamacpp/
checkpoints.py): an agent-shaped conversation reports `cached_tokens` covering its previous turns on every continued
turn, after a restart too (the disk prompt cache), and its answers are exactly those of a server that re-evaluates
every prompt in full (`--ctx-checkpoints 0 --no-prompt-cache`). Batching, grammars, the reasoning budget and
disconnects work on them as on any model."""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import jsonschema
import pytest

from backends.llamacpp.checkpoints import TAIL
from tests.server_process import running_server
from tests.tiny_hybrids import granite4, lfm2, qwen35

FAMILIES = {"tiny-qwen35.gguf": qwen35, "tiny-granite4.gguf": granite4, "tiny-lfm2.gguf": lfm2}
FLAGS = ("--n-ctx", "8192", "--parallel", "2", "--max-loaded-models", "3")
SYSTEM = "You are a coding agent. " + " ".join(f"Rule {i}: read the file before you edit it." for i in range(30))
TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the project.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
          "required": ["city", "days"], "additionalProperties": False}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hybrid-models")
    for name, build in FAMILIES.items():
        shutil.copy(build(), folder / name)
    return folder


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    with running_server("--models-dir", str(models_dir), "--model-name", "tiny-qwen35.gguf", *FLAGS,
                        log_dir=tmp_path_factory.mktemp("hybrids")) as process:
        yield process


@pytest.fixture(scope="module")
def full_evaluation(models_dir, tmp_path_factory):
    """The reference: every prompt evaluated in full (no checkpoints, no disk cache)."""
    with running_server("--models-dir", str(models_dir), "--model-name", "tiny-qwen35.gguf", *FLAGS,
                        "--ctx-checkpoints", "0", "--no-prompt-cache",
                        log_dir=tmp_path_factory.mktemp("hybrids-full")) as process:
        yield process


def converse(server, model: str, turns: range, messages: list | None = None) -> tuple[list, list]:
    """An agent-shaped conversation (system prompt, tools, a user turn and the answer each time): its messages
    and each turn's (answer message, usage)."""
    client = server.openai_client()
    messages = messages or [{"role": "system", "content": SYSTEM}]
    results = []
    for turn in turns:
        messages.append({"role": "user", "content": f"Step {turn}: read src/module_{turn}.py and fix the bug."})
        answer = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=8,
                                                temperature=0)
        message = answer.choices[0].message
        results.append((message.model_dump(exclude_none=True), answer.usage))
        messages.append({"role": "assistant", "content": message.content or ""})
    return messages, results


def assert_resumes_each_turn(results: list, previous_prompt: int | None = None) -> None:
    for _, usage in results:
        cached = usage.prompt_tokens_details.cached_tokens
        if previous_prompt is not None:  # everything up to a few tokens before the last prompt's end
            assert previous_prompt - TAIL <= cached < usage.prompt_tokens, (previous_prompt, usage)
        previous_prompt = usage.prompt_tokens


@pytest.mark.parametrize("model", FAMILIES)
def test_the_card_says_how_the_model_reuses_prompts(server, model):
    assert completion(server, model, "Hello")  # (loaded: a card shows capabilities while its model is)
    card = httpx.get(f"{server.base_url}/v1/models/{model}", timeout=60).json()
    assert card["capabilities"]["prefix_reuse"] == "checkpoints"
    assert card["capabilities"]["speculation"].startswith("off (recurrent state")


@pytest.mark.parametrize("model", FAMILIES)
def test_an_agent_conversation_resumes_from_its_previous_turn(server, full_evaluation, model):
    _, results = converse(server, model, range(6))
    assert results[0][1].prompt_tokens_details.cached_tokens == 0
    assert_resumes_each_turn(results)
    _, reference = converse(full_evaluation, model, range(6))
    assert [answer for answer, _ in results] == [answer for answer, _ in reference]


def test_a_conversation_continued_after_a_restart_resumes_from_disk(models_dir, tmp_path):
    flags = ("--models-dir", str(models_dir), "--model-name", "tiny-qwen35.gguf", *FLAGS,
             "--cache-dir", str(tmp_path / "prompt-cache"))
    with running_server(*flags, log_dir=tmp_path) as server:
        messages, before = converse(server, "tiny-qwen35.gguf", range(2))
    with running_server(*flags, log_dir=tmp_path) as server:
        _, after = converse(server, "tiny-qwen35.gguf", range(2, 4), messages)
    assert_resumes_each_turn(after, previous_prompt=before[-1][1].prompt_tokens)


def completion(server, model: str, prompt: str, **fields) -> str:
    return completion_answer(server, model, prompt, **fields)["choices"][0]["text"]


def completion_answer(server, model: str, prompt: str, **fields) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0, **fields}
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120).json()


def test_a_second_conversation_starts_from_a_checkpoint_of_another_slot(models_dir, full_evaluation, tmp_path):
    """One KV cache for all slots (--kv-unified): a request sharing a long system prompt with a sequence still
    generating copies that sequence's attention cells and returns to its checkpoint inside the shared part."""
    model, endless = "tiny-qwen35.gguf", {"logit_bias": {str(token): -100 for token in range(20)}}
    flags = ("--models-dir", str(models_dir), "--model-name", model, *FLAGS, "--kv-unified",
             "--checkpoint-every", "256", "--no-prompt-cache")
    first, second = SYSTEM + " Question: which file?", SYSTEM + " Question: which test?"
    with running_server(*flags, log_dir=tmp_path) as server:
        running, done = {}, threading.Event()

        def generate_long() -> None:
            running["answer"] = completion_answer(server, model, first, max_tokens=3000, **endless)
            done.set()

        threading.Thread(target=generate_long).start()
        while httpx.get(f"{server.base_url}/", timeout=30).json()["active_sequences"] == 0:
            threading.Event().wait(0.01)
        answer = completion_answer(server, model, second, max_tokens=40, **endless)
        assert not done.is_set(), "the first sequence ended before the second started: nothing was shared"
        assert done.wait(120)
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] >= 256  # (a checkpoint every 256 tokens)
    assert answer["choices"][0]["text"] == completion(full_evaluation, model, second, max_tokens=40, **endless)
    # The first sequence goes on untouched by the copy (llama.cpp gives the second its own recurrent cell on
    # restore). Compared over its start only: hundreds of tokens later, rows batched with another sequence round
    # differently from rows decoded alone, and this random model's near-ties then flip (as test_batching shows).
    alone = completion(full_evaluation, model, first, max_tokens=3000, **endless)
    assert running["answer"]["choices"][0]["text"][:200] == alone[:200]


@pytest.mark.parametrize("model", FAMILIES)
def test_greedy_answers_are_the_same_alone_and_batched(server, model):
    prompts = ["Owls hunt at night near the glaciers of the north.", "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100."]
    alone = [completion(server, model, prompt) for prompt in prompts]
    batched: dict = {}
    threads = [threading.Thread(target=lambda i=i: batched.update({i: completion(server, model, prompts[i])}))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [batched[0], batched[1]] == alone


@pytest.mark.parametrize("model", FAMILIES)
def test_a_schema_answer_validates_after_a_budgeted_thought(server, model):
    answer = server.openai_client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Plan a trip."}], max_tokens=80, temperature=0,
        extra_body={"reasoning_budget": 6},
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)
    reasoning = answer.usage.completion_tokens_details.reasoning_tokens or 0
    assert reasoning <= 6 + 2  # the budget, and the tokens that close the block


@pytest.mark.parametrize("model", FAMILIES)
def test_a_client_leaving_stops_its_generation(server, model):
    body = {"model": model, "prompt": "Tell a long story.", "max_tokens": 4000, "stream": True,
            "logit_bias": {str(token): -100 for token in range(8)}}  # (the tiny vocabulary's control tokens)
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert sum(1 for _, line in zip(range(6), lines) if line.startswith("data: "))
    for _ in range(100):
        status = httpx.get(f"{server.base_url}/", timeout=30).json()
        if status["active_sequences"] == 0:
            break
        threading.Event().wait(0.05)
    assert status["active_sequences"] == 0
    assert completion(server, model, "Still serving?")  # the slot is free and the model answers
