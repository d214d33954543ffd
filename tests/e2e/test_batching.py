"""Continuous batching end to end: many streams in one context, prefix reuse, the bounded queue."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import GEMMA_END_TOKENS
from tests.greedy_agreement import NEAR_TIE, assert_same_or_parted_at_near_tie, parting_index
from tests.server_process import running_server

MODEL = "gemma-3-270m-q4_k_m.gguf"
TOPICS = ["lighthouses", "volcanoes", "bakeries", "glaciers", "trains", "owls", "deserts", "violins"]

# Eight requests that differ in prompt and sampling settings.
VARIED = [
    {"max_tokens": 24},
    {"max_tokens": 28, "presence_penalty": 0.5},
    {"max_tokens": 32, "frequency_penalty": 0.4},
    {"max_tokens": 24, "extra_body": {"repeat_penalty": 1.3}},
    {"max_tokens": 30, "extra_body": {"top_k": 5}},
    {"max_tokens": 26, "top_p": 0.5},
    {"max_tokens": 24, "seed": 5},
    {"max_tokens": 30, "extra_body": {"min_p": 0.2}},
]
# For the solo/batched comparison: greedy requests whose other settings cannot change the argmax, so the raw
# logprobs returned explain any divergence. (Penalties reshape the distribution after those logprobs.)
GREEDY_VARIED = [VARIED[i] for i in (0, 4, 5, 6, 7)] + [
    {"max_tokens": 20, "stop": ["zzzz"]},
    {"max_tokens": 22, "extra_body": {"top_k": 1}},
    {"max_tokens": 18, "top_p": 0.9, "extra_body": {"min_p": 0.01}},
]


def _request(index: int, variants: list[dict] = VARIED) -> dict:
    params = dict(variants[index])
    extra = params.pop("extra_body", {})
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me everything about {TOPICS[index]}."}],
        "temperature": 0,
        "logit_bias": GEMMA_END_TOKENS,
        "stream_options": {"include_usage": True},
        **params,
        "extra_body": extra,
    }


def _stream_tokens(client, index: int, variants: list[dict] = VARIED) -> tuple[list, object]:
    """Stream one request with logprobs; return its token entries (token + top 2) and the usage."""
    chunks = client.chat.completions.create(stream=True, logprobs=True, top_logprobs=2, **_request(index, variants))
    entries, usage = [], None
    for chunk in chunks:
        if chunk.usage:
            usage = chunk.usage
        elif chunk.choices and chunk.choices[0].logprobs:
            entries.extend(chunk.choices[0].logprobs.content)
    return entries, usage


def _concurrently(client, variants: list[dict]) -> list:
    with concurrent.futures.ThreadPoolExecutor(len(variants)) as pool:
        return list(pool.map(lambda i: _stream_tokens(client, i, variants), range(len(variants))))


def test_eight_concurrent_streams_with_different_settings_all_complete(client):
    for index, (entries, usage) in enumerate(_concurrently(client, VARIED)):
        assert usage.completion_tokens == VARIED[index]["max_tokens"] == len(entries)


def test_eight_concurrent_greedy_streams_match_their_solo_runs(client, capsys):
    for _ in range(2):  # the second pass runs in the same (warm prefix cache) regime as the batched one
        solo = [_stream_tokens(client, i, GREEDY_VARIED) for i in range(8)]
    batched = _concurrently(client, GREEDY_VARIED)
    late = early = 0
    for index, ((solo_entries, _), (batch_entries, usage)) in enumerate(zip(solo, batched, strict=True)):
        assert usage.completion_tokens == GREEDY_VARIED[index]["max_tokens"] == len(batch_entries)
        split = parting_index(solo_entries, batch_entries)
        if split is None:
            continue
        if split >= 16:
            late += 1
            continue
        early += 1
        assert_same_or_parted_at_near_tie(solo_entries, batch_entries, f"request {index}")
    with capsys.disabled():
        print(f"\n[batching] of 8 greedy streams: {late} diverged from solo after token 16, "
              f"{early} before it (each at a near tie, top-2 gap < {NEAR_TIE})")


def test_disconnecting_half_the_streams_leaves_the_rest_intact(server, client, http):
    body = {"model": MODEL, "max_tokens": 40, "stream": True, "temperature": 0, "logit_bias": GEMMA_END_TOKENS}
    kept_results = {}

    def keep(index: int) -> None:
        kept_results[index] = _stream_tokens(client, index)

    def abandon(index: int) -> None:
        request = {**body, "messages": [{"role": "user", "content": f"About {TOPICS[index]}"}], "max_tokens": 900}
        with httpx.Client(base_url=server.base_url, timeout=60) as session:
            with session.stream("POST", "/v1/chat/completions", json=request) as response:
                for _, _line in zip(range(6), response.iter_lines()):
                    pass

    threads = [threading.Thread(target=abandon, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=keep, args=(i,)) for i in range(4, 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for index in range(4, 8):
        tokens, usage = kept_results[index]  # complete, with every token delivered
        assert usage.completion_tokens == VARIED[index]["max_tokens"] == len(tokens)
    deadline = time.monotonic() + 10
    while http.get("/").json()["active_sequences"] != 0:
        assert time.monotonic() < deadline, "abandoned sequences still hold their slots"
        time.sleep(0.05)


def test_prefix_reuse_reports_cached_tokens(client):
    system = "You are a harbour master. " + "Ships arrive, ships depart, tides turn. " * 40
    ask = lambda question: client.chat.completions.create(  # noqa: E731
        model=MODEL, max_tokens=2, messages=[{"role": "system", "content": system}, {"role": "user", "content": question}]
    )
    first = ask("When is high tide?")
    again = ask("When is high tide?")
    other = ask("Where do the ferries dock?")
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    # A different question after the same system prompt reuses the shared prefix.
    assert other.usage.prompt_tokens_details.cached_tokens >= 300


@pytest.fixture(scope="module")
def gathering_server(tmp_path_factory):
    """A server of its own: the cells this test moves would change where later requests' cells land in the shared
    server, and with them the last bits of those requests' logits (which a seeded sample at temperature 1 can
    follow to another token)."""
    flags = ("--n-ctx", "4096", "--parallel", "5", "--log-level", "info")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("gathering")) as process:
        yield process


def test_a_long_prompt_after_streams_decoded_together_gathers_the_idle_ones_which_keep_their_prefixes(gathering_server):
    """Four conversations decode together (their KV cells interleave in the shared cache); a long new prompt then
    starts on another slot, and the idle ones are gathered first (backends/llamacpp/kv_layout.py) so that its cells
    lie together. Each conversation asked again reuses its whole prompt from its moved cells and answers the same
    (or parts at a near tie: the cells are summed in another order)."""
    server, client = gathering_server, gathering_server.openai_client()
    variants = [{"max_tokens": 24}] * 4
    firsts = _concurrently(client, variants)
    log_start = len(server.log_path.read_bytes())
    harbour = " ".join(f"Entry {i}: the ferry left at dawn and the lamp was trimmed." for i in range(45))
    long = client.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": harbour}])
    assert long.usage.prompt_tokens - long.usage.prompt_tokens_details.cached_tokens >= 512
    log = server.log_path.read_bytes()[log_start:].decode(errors="replace")
    gathered = [int(line.split("Gathered ")[1].split()[0]) for line in log.splitlines() if "Gathered " in line]
    assert gathered and gathered[-1] >= 4, log[-2000:]
    for index, (first_entries, _) in enumerate(firsts):
        entries, usage = _stream_tokens(client, index, variants)
        assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
        assert_same_or_parted_at_near_tie(first_entries, entries, f"conversation {index}")


@pytest.fixture(scope="module")
def unified_client(tmp_path_factory):
    """A server whose slots share one KV cache (--kv-unified), so one slot can reuse another's prefix."""
    flags = ("--kv-unified", "--parallel", "2", "--n-ctx", "4096")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("unified")) as process:
        yield process.openai_client()


def test_concurrent_requests_share_a_prefix_still_being_generated(unified_client):
    client = unified_client
    system = "You are a lighthouse keeper's logbook. " + "Fog, wind, lamp trimmed, all well. " * 40
    messages = lambda q: [{"role": "system", "content": system}, {"role": "user", "content": q}]  # noqa: E731
    started = threading.Event()

    def long_running():
        stream = client.chat.completions.create(
            model=MODEL, messages=messages("Log entry one."), max_tokens=200, stream=True, logit_bias=GEMMA_END_TOKENS
        )
        for _ in stream:
            started.set()

    worker = threading.Thread(target=long_running)
    worker.start()
    assert started.wait(60)
    second = client.chat.completions.create(model=MODEL, messages=messages("Log entry two."), max_tokens=2)
    worker.join(120)
    # The other slot is still generating, so this prefix can only have come from its KV.
    assert second.usage.prompt_tokens_details.cached_tokens >= 300


@pytest.fixture(scope="module")
def tiny_queue_server(tmp_path_factory):
    flags = ("--parallel", "1", "--max-queue", "1", "--n-ctx", "2048")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("queue")) as process:
        yield process


def test_full_queue_answers_503_with_retry_after(tiny_queue_server):
    base = tiny_queue_server.base_url
    long_body = {"model": MODEL, "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 400,
                 "logit_bias": GEMMA_END_TOKENS, "stream": True}
    with httpx.Client(base_url=base, timeout=60) as running, httpx.Client(base_url=base, timeout=60) as queued:
        with running.stream("POST", "/v1/chat/completions", json=long_body) as first:
            lines = first.iter_lines()  # keep a reference: a discarded iterator closes the stream
            next(lines)  # the only slot is now busy
            waiter = threading.Thread(
                target=lambda: queued.post("/v1/chat/completions", json={**long_body, "stream": False, "max_tokens": 2})
            )
            waiter.start()
            deadline = time.monotonic() + 10
            while httpx.get(f"{base}/").json()["queued_requests"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            rejected = httpx.post(f"{base}/v1/chat/completions", json={**long_body, "stream": False}, timeout=30)
            assert rejected.status_code == 503
            assert rejected.headers["retry-after"]
            assert rejected.json()["error"]["code"] == "server_busy"
        waiter.join(60)
