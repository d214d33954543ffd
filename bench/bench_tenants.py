"""Fairness between tenants: a quiet key's time to first token alone, and while another key floods the server.

One server (`--parallel 8`, the default instruct model) with two user keys. The quiet key's TTFT is measured
alone (baseline, same run), then while the flood key keeps `--flood` streams running (each `--flood-tokens`
long, end tokens banned). Three times: the flood key without limits (tenants only take turns in the queue: the
quiet request waits for one slot to turn over), and with `max_streams` = parallel - 2 and parallel / 2 (slots
stay free for others; the quiet request then pays only for sharing decode steps with the flood).
Target: quiet TTFT under flood <= 2x alone.

Usage: python -m bench.bench_tenants [--flood 16] [--flood-tokens 64] [--samples 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

from tests.server_process import running_server

PARALLEL = 8
END_TOKENS = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>


def ttft(client: httpx.Client, key: str, max_tokens: int, text: str = "Say hello.") -> float:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "stream": True,
            "temperature": 0, "logit_bias": END_TOKENS}
    start = time.perf_counter()
    first = float("nan")
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first != first and '"content":"' in line:
                first = time.perf_counter() - start
    return first


def quiet_ttfts(client: httpx.Client, samples: int) -> list[float]:
    results = []
    for index in range(samples):
        results.append(ttft(client, "sk-quiet", 8, f"Say hello number {index}."))
        time.sleep(0.3)
    return results


def flood(base_url: str, streams: int, tokens: int, stop: threading.Event) -> list[threading.Thread]:
    def keep_streaming() -> None:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            while not stop.is_set():
                try:
                    ttft(client, "sk-flood", tokens, "Write a long story about the sea.")
                except httpx.HTTPStatusError:  # 429 from its own stream limit: try again shortly
                    time.sleep(0.05)

    threads = [threading.Thread(target=keep_streaming, daemon=True) for _ in range(streams)]
    for thread in threads:
        thread.start()
    return threads


def run(flood_limits: dict, args, scratch: Path) -> tuple[float, float]:
    keys = scratch / f"keys-{len(flood_limits)}.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"key": "sk-flood", "label": "flood", "limits": flood_limits},
                                             {"key": "sk-quiet", "label": "quiet"}]}))
    flags = ("--api-key-file", str(keys), "--parallel", str(PARALLEL), "--n-ctx", str(PARALLEL * 1024),
             "--max-queue", "256", "--log-level", "warning")
    with running_server(*flags, log_dir=scratch) as server, httpx.Client(base_url=server.base_url, timeout=600) as c:
        ttft(c, "sk-quiet", 4)  # warm-up
        alone = statistics.median(quiet_ttfts(c, args.samples))
        stop = threading.Event()
        threads = flood(server.base_url, args.flood, args.flood_tokens, stop)
        time.sleep(3)  # the flood is running and queued
        flooded = statistics.median(quiet_ttfts(c, args.samples))
        stop.set()
        for thread in threads:
            thread.join(120)
    return alone, flooded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=16)
    parser.add_argument("--flood-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=6)
    args = parser.parse_args()
    print(f"{'flood key limits':32} {'quiet TTFT alone':>17} {'under flood':>12} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as scratch:
        for limits in ({}, {"max_streams": PARALLEL - 2}, {"max_streams": PARALLEL // 2}):
            alone, flooded = run(limits, args, Path(scratch))
            label = ", ".join(f"{k}={v}" for k, v in limits.items()) or "none (turns in the queue only)"
            print(f"{label:32} {alone * 1000:14.1f} ms {flooded * 1000:9.1f} ms {flooded / alone:6.2f}")


if __name__ == "__main__":
    main()
