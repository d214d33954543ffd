"""Two replicas behind the real vllm-router, same run: how each routing policy keeps conversations where their
prefixes are cached, and what a second replica adds to throughput.

1. Routing: 5 conversations (each with its own ~400-token system prompt, as agents' sessions have) take --turns
   turns, interleaved, every request through the router (5, not 6: with an even count round_robin's turns would
   fall on the same replica every time by accident), under `kv_aware` (fed by our KV events), `round_robin`
   and `cache_aware` (the router's own guess from the request text). Per policy: the mean time to first token of
   continued turns, and how many of them found their whole previous turn cached on the replica that served them.
   Every policy run uses system prompts of its own, so none profits from another's cache.
2. Throughput: --streams concurrent streams of --tokens tokens on 1 replica with all cores (directly) against 2
   replicas with half the cores each behind the router (round_robin): aggregate tokens/s. Replicas on one machine
   must split its cores (`--n-threads`): two llama.cpp processes each spinning threads on all cores measured 0.13x.
   On 2 cores expect no gain; the point of 2 replicas is part 1, and machines with cores (or GPUs) to spare.

Usage: python -m bench.bench_replicas [--turns 4] [--streams 8] [--tokens 64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.replica_cluster import MODEL, replicas, vllm_router
from tests.server_process import ServerProcess
from tests.smollm2 import NO_END_TOKENS

POLICIES = ("kv_aware", "round_robin", "cache_aware")


def streamed(base_url: str, body: dict) -> tuple[float, dict, int]:
    """(seconds to the first content, usage, content chunks) of one streamed chat."""
    body = {**body, "model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0}
    started = time.perf_counter()
    first, usage, chunks = None, None, 0
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                chunks += 1
            usage = chunk.get("usage") or usage
    return (first or time.perf_counter()) - started, usage, chunks


def routing(router: str, policy: str, turns: int) -> tuple[float, int, int]:
    """(mean TTFT ms of continued turns, continued turns with the previous turn cached, continued turns)."""
    conversations = [[{"role": "system", "content": f"{policy} session {index}. You review code for team {index}. "
                       + " ".join(f"Rule {rule}: name the file and the line." for rule in range(40))}]
                     for index in range(5)]
    previous: dict[int, int] = {}
    ttfts, hits = [], 0
    for turn in range(turns):
        for index, messages in enumerate(conversations):
            messages.append({"role": "user", "content": f"Turn {turn}: what should I look at next?"})
            ttft, usage, _ = streamed(router, {"messages": messages, "max_tokens": 12})
            messages.append({"role": "assistant", "content": f"Look at module {turn}."})
            if turn:
                ttfts.append(ttft)
                hits += usage["prompt_tokens_details"]["cached_tokens"] >= previous[index]
            previous[index] = usage["prompt_tokens"]
            time.sleep(0.05)  # (the turn's KV events reach the router)
    return statistics.mean(ttfts) * 1000, hits, len(ttfts)


def throughput(base_url: str, streams: int, tokens: int, tag: str) -> float:
    """Aggregate completion tokens/s of `streams` concurrent streams."""
    def one(index: int) -> int:
        body = {"messages": [{"role": "user", "content": f"{tag} {index}: describe owls."}], "max_tokens": tokens,
                "logit_bias": NO_END_TOKENS}
        return streamed(base_url, body)[1]["completion_tokens"]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        total = sum(pool.map(one, range(streams)))
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    cores = os.cpu_count() or 2
    single = ServerProcess("--model-name", MODEL, "--parallel", "8", "--n-ctx", "8192", "--no-prompt-cache",
                           "--n-threads", str(cores), log_path=folder / "single.log")
    try:
        single.wait_ready()
        one_replica = throughput(single.base_url, args.streams, args.tokens, "one")
    finally:
        single.stop()
    with replicas(folder, 2, "--n-threads", str(max(1, cores // 2))) as workers:
        for server, _ in workers:
            streamed(server.base_url, {"messages": [{"role": "user", "content": "Warm up."}], "max_tokens": 4})
        print(f"{'policy':<12} {'continued-turn TTFT ms':>23} {'previous turn cached':>21}")
        for policy in POLICIES:
            with vllm_router(folder, workers, policy) as router:
                ttft, hits, continued = routing(router, policy, args.turns)
            print(f"{policy:<12} {ttft:>23.1f} {f'{hits}/{continued}':>21}")
        with vllm_router(folder, workers, "round_robin") as router:
            two_replicas = throughput(router, args.streams, args.tokens, "two")
        print(f"\n{args.streams} streams x {args.tokens} tokens: 1 replica ({cores} threads) {one_replica:.1f} tok/s, "
              f"2 replicas ({max(1, cores // 2)} each) behind the router {two_replicas:.1f} tok/s "
              f"({two_replicas / one_replica:.2f}x)")


if __name__ == "__main__":
    main()
