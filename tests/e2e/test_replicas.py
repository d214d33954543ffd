"""Replicas behind the real vllm-router (PyPI `vllm-router`, its Rust binary) with its `kv_aware` policy fed by our
KV-cache events (`--kv-events`, vLLM's ZMQ/msgpack format; api/kv_events.py): every continued turn of interleaved
multi-turn conversations lands on the replica that holds its prefix. The replicas keep no disk prompt cache here,
so only the replica that evaluated a conversation's earlier turns can report them as cached: a turn the router sent
elsewhere would show it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.replica_cluster import BLOCK, MODEL, replicas, vllm_router
from tests.server_process import strict_client

SYSTEM = "You are a careful assistant for a team of engineers. Answer in one short sentence."


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    with replicas(tmp_path_factory.mktemp("replicas"), 2) as started:
        yield started


def chats_served(server) -> int:
    return sum(1 for line in server.log_path.read_text(errors="replace").splitlines()
               if "path=/v1/chat/completions status=200" in line)


def test_kv_aware_routing_sends_each_continued_turn_to_the_replica_holding_its_prefix(workers, tmp_path):
    """Each conversation's first turn goes straight to a replica (a placement round-robin would not reproduce);
    its next turns go through the router, which can only know where each conversation lives from the events."""
    placement = [0, 0, 1, 1, 1, 0]  # (round_robin through the router would send the k-th request to k % 2)
    before = [chats_served(server) for server, _ in workers]
    conversations = [[{"role": "system", "content": f"{word.title()} service, project {index}. {SYSTEM}"}]
                     for index, word in enumerate(["billing", "search", "storage", "payments", "login", "email"])]
    previous: dict[int, int] = {}
    misses = []
    with vllm_router(tmp_path, workers, "kv_aware") as router:
        for turn in range(3):
            for index, messages in enumerate(conversations):  # interleaved: every conversation, turn by turn
                server = workers[placement[index]][0]
                client = strict_client(f"{server.base_url if turn == 0 else router}/v1")
                messages.append({"role": "user", "content": f"Question {turn}: what should we check first?"})
                answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
                messages.append({"role": "assistant", "content": answer.choices[0].message.content})
                cached = answer.usage.prompt_tokens_details.cached_tokens
                if turn and cached < previous[index]:
                    misses.append((index, turn, cached, previous[index]))
                previous[index] = answer.usage.prompt_tokens
                time.sleep(0.15)  # (the events of the turn just answered reach the router)
    assert not misses, misses
    served = [chats_served(server) - count for (server, _), count in zip(workers, before, strict=True)]
    assert served == [9, 9], served  # each replica served its own three conversations, all three turns


def test_interleaved_conversations_each_keep_their_slot(workers):
    """A new conversation takes an empty slot rather than the slot of another one that shares only the template's
    first tokens with it (which evicted that conversation while empty slots waited)."""
    client = strict_client(f"{workers[1][0].base_url}/v1")
    conversations = [[{"role": "system", "content": f"Team {name}. {SYSTEM}"}] for name in ("red", "green", "blue")]
    for turn in range(2):
        for messages in conversations:
            messages.append({"role": "user", "content": f"Step {turn}: what now?"})
            answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
            messages.append({"role": "assistant", "content": answer.choices[0].message.content})
            if turn:
                assert answer.usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens // 2


@pytest.mark.parametrize("path", ["/v1/chat/completions/render", "/chat/completions/render"])
def test_render_gives_the_prompt_tokens_a_chat_request_evaluates(workers, path):
    server = workers[0][0]
    messages = [{"role": "user", "content": "Hello there"}]
    body = {"model": MODEL, "messages": messages, "stream": False, "skip_special_tokens": True}  # (as the router sends)
    rendered = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
    assert rendered.status_code == 200, rendered.text
    tokens = rendered.json()["token_ids"]
    answer = strict_client(f"{server.base_url}/v1").chat.completions.create(model=MODEL, messages=messages,
                                                                             max_tokens=1)
    assert len(tokens) == answer.usage.prompt_tokens and rendered.json()["model"] == MODEL
    prompt = httpx.post(f"{server.base_url}/apply-template", json={"model": MODEL, "messages": messages},
                        timeout=60).json()["prompt"]
    completion = httpx.post(f"{server.base_url}/v1/completions/render", json={"model": MODEL, "prompt": prompt},
                            timeout=60).json()
    assert completion["token_ids"] == tokens


def scrape(server) -> dict[str, list]:
    """The replica's /metrics: metric name -> its samples (labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def gauge(found: dict[str, list], name: str) -> float:
    (value,) = [value for labels, value in found[name] if labels["model_name"] == MODEL]
    return value


def test_the_gauges_routers_scrape_are_published_under_their_names_and_follow_the_engine(workers):
    """The names llm-d's / the Gateway API Inference Extension's endpoint picker reads by default (vLLM's), as
    api/router_metrics.py documents them and README lists them, with what the engine holds behind each."""
    from api.router_metrics import CONTRACT
    from tests.smollm2 import NO_END_TOKENS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in CONTRACT), "README's replica section lists every name"
    server = workers[1][0]
    idle = scrape(server)
    assert set(CONTRACT) - {"vllm:lora_requests_info"} <= set(idle), sorted(idle)  # (no adapters: no LoRA line)
    (layout,) = [labels for labels, _ in idle["vllm:cache_config_info"] if labels["model_name"] == MODEL]
    assert (layout["block_size"], layout["num_gpu_blocks"]) == (str(BLOCK), str(8192 // BLOCK))

    stream = strict_client(f"{server.base_url}/v1").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"{SYSTEM} Describe a long checklist."}],
        max_tokens=400, temperature=0, logit_bias=NO_END_TOKENS, stream=True, stream_options={"include_usage": True})
    next(stream)  # generating now
    during = scrape(server)
    assert (gauge(during, "vllm:num_requests_running"), gauge(during, "vllm:num_requests_waiting")) == (1, 0)
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    # (the finished conversation's tokens stay in its slot for a next turn: they count, as vLLM's cached blocks do)
    floor = (usage.prompt_tokens + usage.completion_tokens - 1) / 8192 + gauge(idle, "vllm:kv_cache_usage_perc")
    deadline = time.monotonic() + 3  # (the engine worker sends its figures at least once a second)
    while gauge(after := scrape(server), "vllm:kv_cache_usage_perc") < floor and time.monotonic() < deadline:
        time.sleep(0.1)
    held = gauge(after, "vllm:kv_cache_usage_perc")
    assert floor <= held < 1 and gauge(after, "vllm:num_requests_running") == 0
    assert gauge(after, "vllm:gpu_cache_usage_perc") == held
    assert [value for labels, value in after["llm_kv_cache_usage"] if labels["model"] == MODEL] == [held]


def test_a_named_conversation_keeps_its_slot_when_another_shares_its_system_prompt(workers):
    """Agents' sessions share long system prompts. Unnamed, a new session takes over the slot of a live one that
    shares its system prompt (the most similar slot), and that one's next turn evaluates its history again; named
    (`x-session-id`, `prompt_cache_key`) each keeps its own slot while unclaimed ones are free."""
    server = workers[0][0]
    client = strict_client(f"{server.base_url}/v1")

    def turn(messages: list[dict], question: str, **naming) -> tuple[int, int]:
        messages.append({"role": "user", "content": question})
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                **naming)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
        return answer.usage.prompt_tokens, answer.usage.prompt_tokens_details.cached_tokens

    def two_sessions(project: str, a_naming: dict, b_naming: dict) -> tuple[int, int]:
        system = f"Project {project}. {SYSTEM} " + " ".join(f"Rule {i}: keep the build green." for i in range(30))
        a, b = [{"role": "system", "content": system}], [{"role": "system", "content": system}]
        first_prompt, _ = turn(a, "Which file holds the router?", **a_naming)
        turn(b, "Which test is flaky?", **b_naming)
        _, cached = turn(a, "And who owns it?", **a_naming)
        return first_prompt, cached

    first_prompt, cached = two_sessions("Orion", {}, {})
    assert cached < first_prompt  # unnamed: session b took a's slot
    first_prompt, cached = two_sessions("Vega", {"extra_headers": {"x-session-id": "session-a"}},
                                        {"prompt_cache_key": "session-b"})
    assert cached >= first_prompt, (cached, first_prompt)
    log = server.log_path.read_text(errors="replace")
    assert "session=session-a" in log and "session=session-b" in log


def test_a_killed_replicas_conversations_continue_on_another_from_the_shared_disk_cache(tmp_path):
    """Replicas sharing --cache-dir: when one dies, the router sends its conversations to the other, which restores
    their prefixes from the disk cache the dead one wrote; no request after the kill fails."""
    shared = tmp_path / "shared-cache"
    with replicas(tmp_path, 2, "--prompt-cache", "--cache-dir", str(shared), "--cache-min-tokens", "32") as pair:
        conversations = [[{"role": "system", "content": f"Desk {index}. {SYSTEM} "
                           + " ".join(f"Note {n}: reply briefly." for n in range(20))}] for index in range(4)]
        previous: dict[int, int] = {}
        with vllm_router(tmp_path, pair, "kv_aware", "--health-check-interval-secs", "1",
                         "--health-failure-threshold", "1") as router:
            for turn in range(3):
                if turn == 2:
                    time.sleep(3)  # (the states' disk writes wait for a quiet moment, 2 s at most)
                    pair[0][0].process.kill()  # SIGKILL: no goodbye; its worker process ends with it
                for index, messages in enumerate(conversations):
                    first_placement = pair[index % 2][0].base_url  # turn 0 straight to a replica: 0, 1, 0, 1
                    client = strict_client(f"{first_placement if turn == 0 else router}/v1", max_retries=0)
                    messages.append({"role": "user", "content": f"Question {turn}: what is next?"})
                    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                                            temperature=0)
                    messages.append({"role": "assistant", "content": answer.choices[0].message.content})
                    cached = answer.usage.prompt_tokens_details.cached_tokens
                    if turn:  # on its replica (turn 1), restored from the dead one's states on the other (turn 2)
                        assert cached >= previous[index], (index, turn, cached, previous[index])
                    previous[index] = answer.usage.prompt_tokens
        survivor_log = pair[1][0].log_path.read_text(errors="replace")
        assert survivor_log.count("path=/v1/chat/completions status=200") == 2 + 2 + 4  # its own, then all four


def test_a_conversation_that_lost_its_slot_goes_to_the_replica_holding_it_on_disk(tmp_path):
    """The disk prompt cache as the DISK medium of the events: each replica (one slot, its own --cache-dir) answers
    one conversation, then another conversation takes its slot, so the first one's blocks leave its live KV (GPU) and
    stay only in its disk cache. Through the router, each conversation's next turn goes to the replica whose disk
    holds it (vllm-router credits DISK blocks at --kv-penalty-disk) and restores its prefix from there. Without the
    DISK medium the router sees neither conversation anywhere and places both by load."""
    with replicas(tmp_path, 2, "--prompt-cache", "--cache-min-tokens", "32", "--parallel", "1") as pair:
        def talk(base_url: str, messages: list[dict], question: str):
            messages.append({"role": "user", "content": question})
            answer = strict_client(f"{base_url}/v1", max_retries=0).chat.completions.create(
                model=MODEL, messages=messages, max_tokens=8, temperature=0)
            messages.append({"role": "assistant", "content": answer.choices[0].message.content})
            return answer.usage

        notes = " ".join(f"Note {n}: reply briefly." for n in range(20))
        conversations = [[{"role": "system", "content": f"Ledger {index}. {SYSTEM} {notes}"}] for index in range(2)]
        first_prompts = [talk(server.base_url, conversations[index], "Question 0: what is next?").prompt_tokens
                         for index, (server, _) in enumerate(pair)]
        for index, (server, _) in enumerate(pair):  # the slot goes to another conversation
            talk(server.base_url, [{"role": "system", "content": f"Unrelated desk {index}. {notes}"}], "Hello?")
        time.sleep(3)  # (disk writes wait for a quiet moment, 2 s at most; then their events go out)
        before = [chats_served(server) for server, _ in pair]
        # (started now, the router learns what happened before from the replicas' replay sockets)
        with vllm_router(tmp_path, pair, "kv_aware", replay=True) as router:
            time.sleep(2)  # (idle replicas repeat their last sequence number every second: then the router asks)
            for index, messages in enumerate(conversations):
                usage = talk(router, messages, "Question 1: and then?")
                assert usage.prompt_tokens_details.cached_tokens >= first_prompts[index], (index, usage)
        served = [chats_served(server) - count for (server, _), count in zip(pair, before, strict=True)]
        assert served == [1, 1], served


def test_a_session_header_keeps_a_conversation_on_one_replica_under_consistent_hash(workers, tmp_path):
    """The router's `consistent_hash` hashes `x-session-id`, the header our replicas key slots by: each session's
    turns land on one replica (the round_robin of the same requests would alternate) and find their prefix there."""
    before = [chats_served(server) for server, _ in workers]
    sessions = {f"session-{index}": [{"role": "system", "content": f"Shift {index}. {SYSTEM}"}] for index in range(3)}
    previous: dict[str, int] = {}  # (3 sessions: with an even count round_robin would keep each on one by accident)
    with vllm_router(tmp_path, workers, "consistent_hash") as router:
        client = strict_client(f"{router}/v1")
        for turn in range(3):
            for session, messages in sessions.items():
                messages.append({"role": "user", "content": f"Item {turn}: what is next?"})
                answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                        extra_headers={"x-session-id": session})
                messages.append({"role": "assistant", "content": answer.choices[0].message.content})
                if turn:
                    assert answer.usage.prompt_tokens_details.cached_tokens >= previous[session], session
                previous[session] = answer.usage.prompt_tokens
    served = [chats_served(server) - count for (server, _), count in zip(workers, before, strict=True)]
    assert sum(served) == 9, served
    logs = [server.log_path.read_text(errors="replace") for server, _ in workers]
    for session in sessions:  # all three turns of a session on one replica, none on the other
        assert sorted(sum(line.endswith(f" session={session}") for line in log.splitlines()) for log in logs) \
            == [0, 3], session
