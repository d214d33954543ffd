"""Load proof: many concurrent streaming clients on the default model, bounded, loopback only.

First every distinct prompt runs alone (temperature 0) to record its reference tokens; then `--clients`
concurrent streams run `--requests` requests cycling over those prompts. Reported: errors, streams whose
first `--check-tokens` tokens differ from their solo run (lost or interleaved tokens would show here; a
difference can also be llama.cpp's batch-shape rounding at a near tie), aggregate tok/s, TTFT p50/p95, and the
server's RSS after warm-up and at the end (it should stay flat), plus active sequences afterwards (0).

Usage: python -m bench.bench_load [--clients 64] [--requests 128] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from backends.embedded_model import GEMMA_FILE
from tests.server_process import running_server

TOPICS = ["owls", "rivers", "castles", "comets", "violins", "glaciers", "bakeries", "trains",
          "deserts", "bridges", "pianos", "forests", "beetles", "harbours", "volcanoes", "lighthouses"]
BANNED_END = {"1": -100, "106": -100}


def stream(client: httpx.Client, topic: str, max_tokens: int) -> tuple[list[dict], float]:
    """The streamed tokens (logprob entries with the top 2 alternatives) and the time to the first."""
    body = {"messages": [{"role": "user", "content": f"Write about {topic}."}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "logprobs": True, "top_logprobs": 2, "logit_bias": BANNED_END}
    start = time.perf_counter()
    tokens, first = [], float("nan")
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            for choice in chunk.get("choices", []):
                for entry in (choice.get("logprobs") or {}).get("content") or []:
                    if not tokens:
                        first = time.perf_counter() - start
                    tokens.append(entry)
    return tokens, first


NEAR_TIE = 1.0  # logit gap below which llama.cpp's batch-shape rounding may flip a greedy pick


def compare(tokens: list[dict], solo: list[dict], check: int, expected: int) -> str | None:
    """None if the first `check` tokens match the solo run; "near tie" if they part where the solo run's best
    two tokens were within NEAR_TIE (rounding, not a bug); "differs" otherwise (lost/interleaved tokens)."""
    if len(tokens) != expected:
        return "differs"
    for got, want in zip(tokens[:check], solo[:check]):
        if got["token"] == want["token"]:
            continue
        top = want.get("top_logprobs") or []
        gap = top[0]["logprob"] - top[1]["logprob"] if len(top) >= 2 else float("inf")
        return "near tie" if gap < NEAR_TIE else "differs"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--check-tokens", type=int, default=8)
    args = parser.parse_args()
    flags = ("--model-name", GEMMA_FILE, "--parallel", "8", "--n-ctx", "8192", "--max-queue", str(args.clients * 2), "--log-level", "warning")
    with tempfile.TemporaryDirectory() as scratch, running_server(*flags, log_dir=Path(scratch)) as server:
        limits = httpx.Limits(max_connections=args.clients + 8)
        with httpx.Client(base_url=server.base_url, timeout=900, limits=limits) as client:
            solo = {topic: stream(client, topic, args.max_tokens)[0] for topic in TOPICS}
            rss_warm = client.get("/").json()["memory"]["rss_bytes"]
            errors, mismatches, near_ties, ttfts, produced = 0, 0, 0, [], 0

            def run(index: int):
                topic = TOPICS[index % len(TOPICS)]
                return topic, stream(client, topic, args.max_tokens)

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                futures = [pool.submit(run, i) for i in range(args.requests)]
                for future in concurrent.futures.as_completed(futures):
                    try:
                        topic, (tokens, first) = future.result()
                    except Exception as exc:  # counted, not fatal: the point is to see them
                        errors += 1
                        print("error:", exc)
                        continue
                    produced += len(tokens)
                    ttfts.append(first)
                    verdict = compare(tokens, solo[topic], args.check_tokens, args.max_tokens)
                    mismatches += verdict is not None
                    near_ties += verdict == "near tie"
            wall = time.perf_counter() - start
            status = client.get("/").json()
    ttfts.sort()
    print(f"clients {args.clients}, requests {args.requests}, {args.max_tokens} tokens each")
    print(f"errors {errors}; streams differing from their solo run in the first {args.check_tokens} tokens "
          f"(or short): {mismatches}, of which at a near tie (solo's top-2 gap < {NEAR_TIE}): {near_ties}")
    print(f"aggregate {produced / wall:.1f} tok/s over {wall:.1f} s; TTFT p50 {statistics.median(ttfts):.2f} s, "
          f"p95 {ttfts[int(len(ttfts) * 0.95) - 1]:.2f} s")
    print(f"RSS after warm-up {rss_warm / 2**20:.0f} MiB, at the end {status['memory']['rss_bytes'] / 2**20:.0f} MiB; "
          f"active sequences afterwards {status['active_sequences']}")


if __name__ == "__main__":
    main()
