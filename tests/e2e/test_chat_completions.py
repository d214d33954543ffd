"""Chat completions end to end: real server, official openai client (strict validation). Engine mechanics run on
the embedded gemma base model (its end tokens can be banned to force full-length output); chat quality on the
default instruct model, SmolLM2-135M-Instruct."""

from __future__ import annotations

import concurrent.futures
import re
import time

import httpx

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from tests.e2e.conftest import GEMMA_END_TOKENS

MODEL = GEMMA_FILE
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def _stream_text(client, **kwargs) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_non_streaming_completion(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 5
    assert 1 <= response.usage.completion_tokens <= 16
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_model_field_absent_uses_default_and_stem_is_accepted(client, http):
    # The openai SDK always sends `model`; other clients may not.
    without = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
    assert without.status_code == 200 and without.json()["model"] == SMOLLM2_FILE
    stem = client.chat.completions.create(model=MODEL.removesuffix(".gguf"), messages=MESSAGES, max_tokens=2)
    assert stem.model == MODEL


def test_default_instruct_model_answers_and_ends_its_turn(client):
    """The default model is a chat model: it answers the question (the GGUF's own ChatML template, rendered in the
    sandbox) and ends its turn at <|im_end|> long before max_tokens, where the base model would ramble on."""
    kwargs = dict(messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
                  max_tokens=200, temperature=0)
    response = client.chat.completions.create(model=SMOLLM2_FILE, **kwargs)
    answer = response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop" and response.usage.completion_tokens < 60
    assert "Paris" in answer and "<|im_" not in answer and "capital of France?" not in answer
    streamed, chunks = _stream_text(client, model=SMOLLM2_FILE, **kwargs)
    assert streamed == answer and chunks[-1].choices[0].finish_reason == "stop"


def test_stream_concatenates_to_non_stream_text(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0, seed=7)
    # Warm the prompt cache first: a cached prefix re-evaluates only the last prompt token, which changes
    # floating-point rounding versus a cold batch, and both runs compared below must be in the same regime.
    client.chat.completions.create(**kwargs)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    text, chunks = _stream_text(client, **kwargs)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_bare_base_url_streams_and_completes(bare_client):
    response = bare_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert response.choices[0].message.content is not None
    text, chunks = _stream_text(bare_client, model=MODEL, messages=MESSAGES, max_tokens=4)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_include_usage_sends_a_final_usage_chunk(client):
    _, chunks = _stream_text(
        client, model=MODEL, messages=MESSAGES, max_tokens=6, logit_bias=GEMMA_END_TOKENS,
        stream_options={"include_usage": True},
    )
    *body, last = chunks
    assert last.choices == []
    assert last.usage.completion_tokens == 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6
    assert all(c.usage is None for c in body)


def test_max_tokens_ends_with_length(client):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, logit_bias=GEMMA_END_TOKENS
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5
    newer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=3, logit_bias=GEMMA_END_TOKENS
    )
    assert newer.usage.completion_tokens == 3


def test_stop_sequence_cuts_the_text_before_it(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, logit_bias=GEMMA_END_TOKENS)
    client.chat.completions.create(**kwargs)  # warm the cache (see test_stream_concatenates...)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    assert len(full) > 12, full
    stop = full[8:12]
    expected = full[: full.index(stop)]
    cut = client.chat.completions.create(stop=[stop, "never-appears"], **kwargs)
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    streamed, chunks = _stream_text(client, stop=stop, **kwargs)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_describe_the_chosen_tokens(client):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
        logit_bias=GEMMA_END_TOKENS,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 6
    assert "".join(entry.token for entry in content) == response.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        ranked = [alt.logprob for alt in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy decoding picks the most likely token, so it heads its own alternatives.
        assert entry.top_logprobs[0].token == entry.token
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4
        assert bytes(entry.bytes).decode() == entry.token


def test_streamed_logprobs(client):
    _, chunks = _stream_text(
        client, model=MODEL, messages=MESSAGES, max_tokens=4, logprobs=True, top_logprobs=1,
        logit_bias=GEMMA_END_TOKENS,
    )
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 4


def test_n_choices_are_each_generated(client):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, n=2, temperature=1.0, seed=3, logit_bias=GEMMA_END_TOKENS
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in response.choices)
    assert response.usage.completion_tokens == 10
    _, chunks = _stream_text(client, model=MODEL, messages=MESSAGES, max_tokens=3, n=2, logit_bias=GEMMA_END_TOKENS)
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_seed_makes_sampling_reproducible(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=1.0, top_p=1.0, extra_body={"top_k": 0, "min_p": 0.0})
    client.chat.completions.create(seed=1, **kwargs)  # warm the cache
    first = client.chat.completions.create(seed=11, **kwargs).choices[0].message.content
    again = client.chat.completions.create(seed=11, **kwargs).choices[0].message.content
    other = [client.chat.completions.create(seed=s, **kwargs).choices[0].message.content for s in (12, 13)]
    assert first == again
    assert any(text != first for text in other)


def test_concurrent_streams_all_complete(client):
    def run(index: int) -> tuple[int, int]:
        _, chunks = _stream_text(
            client, model=MODEL, messages=[{"role": "user", "content": f"Count to {index + 10}."}],
            max_tokens=24, logit_bias=GEMMA_END_TOKENS, stream_options={"include_usage": True},
            extra_body={"speculative": False},  # (a checked guess goes out as one delta of several tokens)
        )
        deltas = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        return chunks[-1].usage.completion_tokens, deltas

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for completion_tokens, deltas in results:
        assert completion_tokens == 24
        assert deltas >= 18  # one delta per token, except where a multi-byte character spans tokens


def _status(http) -> dict:
    return http.get("/").json()


def test_disconnect_mid_stream_frees_the_engine(server, client, http):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 900, "stream": True, "logit_bias": GEMMA_END_TOKENS}
    request_id = f"req-left-early-{time.monotonic_ns()}"
    with httpx.Client(base_url=server.base_url, timeout=60, headers={"X-Request-ID": request_id}) as session:
        with session.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            received = [line for line, _ in zip(lines, range(8))]
            assert any(line.startswith("data: ") for line in received)
            assert _status(http)["active_sequences"] == 1
    deadline = time.monotonic() + 5
    while _status(http)["active_sequences"] != 0:
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.05)
    # The request log counts what happened: the prompt was evaluated and tokens were sent before the client left.
    pattern = re.compile(rf"request_id={request_id} .*prompt_tokens=(\d+) completion_tokens=(\d+)")
    while not (logged := pattern.search(server.log_path.read_text(errors="replace"))):
        assert time.monotonic() < deadline + 5, "the request was never logged"
        time.sleep(0.05)
    assert logged and int(logged[1]) > 0 and int(logged[2]) >= 3, logged
    after = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert after.choices[0].finish_reason in ("stop", "length")


def test_non_streaming_disconnect_frees_the_engine(server, http):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 900, "logit_bias": GEMMA_END_TOKENS}
    try:
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=1.0)
    except httpx.ReadTimeout:
        pass
    deadline = time.monotonic() + 5
    while _status(http)["active_sequences"] != 0:
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.05)


def test_models_endpoints(client, http):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL
    bare = http.get("/models").json()
    assert bare["object"] == "list"
    entry = next(m for m in bare["data"] if m["id"] == MODEL)
    assert entry["status"] == "loaded" and entry["context_length"] == 1024


def test_status_and_health(http):
    assert http.get("/health").status_code == 200
    status = http.get("/").json()
    assert status["model"] == status["default_model"] == SMOLLM2_FILE
    assert status["status"] == "ready"


def test_set_model_loads_and_sets_default(http):
    response = http.post("/setModel", json={"modelName": MODEL})
    assert response.status_code == 200
    assert response.json()["model"] == MODEL
    assert http.get("/").json()["default_model"] == MODEL
    missing = http.post("/setModel", json={"modelName": "nope.gguf"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert http.post("/setModel", json={"modelName": SMOLLM2_FILE}).status_code == 200  # the session's default again


def test_continue_final_message_continues_the_assistants_text(client):
    """vLLM's `continue_final_message`: the last message, an assistant's, is the start of the answer (the web page's
    Continue on a cut answer). The answer continues it: greedy, it equals what the model wrote after that text when
    it answered from scratch."""
    question = [{"role": "user", "content": "List the planets of the solar system, separated by commas."}]
    whole = client.chat.completions.create(model=SMOLLM2_FILE, messages=question, max_tokens=24, temperature=0)
    text = whole.choices[0].message.content
    cut = len(text) // 2
    cut = text.rindex(" ", 0, cut) if " " in text[:cut] else cut  # (at a word: the cut text retokenizes the same)
    rest = client.chat.completions.create(
        model=SMOLLM2_FILE, messages=question + [{"role": "assistant", "content": text[:cut]}], temperature=0,
        max_tokens=24 - whole.usage.completion_tokens // 2 + 4, extra_body={"continue_final_message": True})
    assert (text[:cut] + rest.choices[0].message.content).startswith(text[:cut + 8]), (text, rest)
    plain = client.chat.completions.create(
        model=SMOLLM2_FILE, messages=question + [{"role": "assistant", "content": text[:cut]}], temperature=0,
        max_tokens=8)
    assert rest.usage.prompt_tokens < plain.usage.prompt_tokens  # (answered, not continued: a new turn is opened)


def test_continue_final_message_needs_an_assistant_message_last(http):
    response = http.post("/v1/chat/completions", json={
        "model": SMOLLM2_FILE, "messages": [{"role": "user", "content": "Hi"}], "continue_final_message": True})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "continue_final_message"
