"""Persistent prompt cache: time to first token cold, warm in memory, and restored from disk after a restart;
and what saving states costs the requests that trigger the saves.

One run, one machine, our server on the embedded gemma model, a ~1.8k-token conversation prefix:
  cold         a fresh server, the conversation + a question (nothing cached)
  warm (RAM)   POST /restore_cache with the conversation, then the conversation + another question
  disk         the server restarted on the same cache dir, the conversation + a third question
  save cost    N requests with distinct ~1.8k-token prompts (each saved to disk), total time per request with
               the cache on vs --no-prompt-cache (the save must stay off the request path)

Targets (issue 5): warm <= 0.1 s, disk-restored <= 0.2 s, no request's total time grows by more than 5 %.

Usage: python -m bench.bench_prompt_cache [--requests 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from backends.embedded_model import GEMMA_FILE
from tests.server_process import running_server

TOPICS = ["lighthouses", "volcanoes", "bakeries", "glaciers", "trains", "owls", "deserts", "violins"]


def conversation(seed: int) -> list[dict]:
    """~1.8k tokens of system prompt and history; `seed` makes it distinct from the start."""
    rules = " ".join(
        f"Entry {i}: the tide rose at dawn, the ferry {TOPICS[(i + seed) % 8]} left on time, the lamp was trimmed."
        for i in range(85)
    )
    return [
        {"role": "system", "content": f"Archive {seed}. You are the archivist of a harbour town. {rules}"},
        {"role": "user", "content": "What happened at dawn?"},
        {"role": "assistant", "content": "The tide rose, as it does every day."},
    ]


def ask(client: httpx.Client, messages: list[dict], question: str, max_tokens: int = 16) -> tuple[float, float, dict]:
    """(time to first token, total time, usage) of one streamed chat request (on a kept-alive connection, so
    client set-up is not counted)."""
    body = {"messages": messages + [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, usage = None, {}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    return first or float("nan"), time.perf_counter() - start, usage


def ttfts(cache_dir: Path, flags: tuple[str, ...], log_dir: Path) -> dict[str, float]:
    messages = conversation(0)
    results = {}
    with running_server(*flags, "--cache-dir", str(cache_dir), log_dir=log_dir) as server, connect(server) as client:
        results["cold"], _, usage = ask(client, messages, "Summarise entry 3.")
        print(f"  cold: prompt {usage.get('prompt_tokens')} tokens, cached {usage['prompt_tokens_details']['cached_tokens']}")
        restored = client.post("/restore_cache", json={"messages": messages}).json()
        print(f"  /restore_cache: {restored}")
        results["warm_ram"], _, usage = ask(client, messages, "Summarise entry 7.")
        print(f"  warm: cached {usage['prompt_tokens_details']['cached_tokens']}")
    with running_server(*flags, "--cache-dir", str(cache_dir), log_dir=log_dir) as server, connect(server) as client:
        client.get("/health")  # open the connection
        results["disk_after_restart"], _, usage = ask(client, messages, "Summarise entry 5.")
        print(f"  disk: cached {usage['prompt_tokens_details']['cached_tokens']}")
        print(f"  /cache: {client.get('/cache').json()}")
    return results


def connect(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=600)


def save_cost(flags: tuple[str, ...], requests: int, log_dir: Path, cache_dir: Path) -> dict[str, float]:
    """Median total time of requests whose finished sequences are saved (cache on) or not (cache off)."""
    totals = {}
    for label, extra in (("cache_on", ("--cache-dir", str(cache_dir))), ("cache_off", ("--no-prompt-cache",))):
        with running_server(*flags, *extra, log_dir=log_dir) as server, connect(server) as client:
            ask(client, conversation(100), "Warm up.")  # first-request overheads out of the way
            times = [ask(client, conversation(10 + i), "Summarise entry 3.", 32)[1] for i in range(requests)]
            totals[label] = statistics.median(times)
            if label == "cache_on":
                time.sleep(1)
                print(f"  /cache after the save runs: {client.get('/cache').json()}")
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    flags = ("--model-name", GEMMA_FILE, "--n-threads", str(args.threads), "--parallel", "2", "--n-ctx", "8192")
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        print("TTFT, ~1.8k-token conversation prefix:")
        results = ttfts(scratch_path / "cache-ttft", flags, scratch_path)
        print("Save cost (distinct long prompts, each saved):")
        totals = save_cost(flags, args.requests, scratch_path, scratch_path / "cache-cost")
    print()
    print(f"{'case':<22}{'seconds':>10}")
    for name, value in results.items():
        print(f"{'TTFT ' + name:<22}{value:>10.3f}")
    for name, value in totals.items():
        print(f"{'total ' + name:<22}{value:>10.3f}")
    growth = totals["cache_on"] / totals["cache_off"] - 1
    print(f"\nwarm <= 0.1 s: {results['warm_ram']:.3f} s; disk-restored <= 0.2 s: {results['disk_after_restart']:.3f} s; "
          f"request time with saving on: {growth * 100:+.1f} % (target <= +5 %)")


if __name__ == "__main__":
    main()
