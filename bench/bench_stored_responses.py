"""A stored conversation continued after a restart: how long the next turn takes to start.

A ~2k-token conversation is answered and stored (`/v1/responses`, store on), the server is stopped and started again
over the same state database and cache directory, and the conversation is continued with `previous_response_id`.
Done twice: over SQLite (the default state database) and over a real PostgreSQL (Debian's server, started here as the
tests start it), where the second instance is a fresh one pointed at the same database and cache directory, as a
second instance behind a load balancer would be. The baseline, measured in the same run: the same conversation sent
whole to a server with a fresh (empty) cache directory, i.e. a cold prefill. Target: continued TTFT <= 0.2 s, cold
>= 3 s here.

Usage: python -m bench.bench_stored_responses [--words 1400] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx

from backends.embedded_model import GEMMA_FILE
from tests.postgres_server import running_postgres
from tests.server_process import running_server


def ttft(http: httpx.Client, body: dict) -> tuple[float, dict]:
    """(seconds to the first output text, the final response)."""
    start, first, final = time.perf_counter(), None, {}
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.output_text.delta" and first is None:
                first = time.perf_counter() - start
            if event["type"] in ("response.completed", "response.incomplete"):
                final = event["response"]
    return first if first is not None else time.perf_counter() - start, final


def continued_after_restart(flags: tuple[str, ...], root: Path, first_turn: dict) -> tuple[float, dict, dict]:
    """Store the first turn on one server, continue it on a new one over the same state: (TTFT, first, answer)."""
    for name in ("first", "second"):
        (root / name).mkdir(parents=True)
    with running_server(*flags, log_dir=root / "first") as server, \
            httpx.Client(base_url=server.base_url, timeout=600) as http:
        _, first = ttft(http, first_turn)
    with running_server(*flags, log_dir=root / "second") as server, \
            httpx.Client(base_url=server.base_url, timeout=600) as http:
        continued, answer = ttft(http, {"model": GEMMA_FILE, "input": "And in one word?", "max_output_tokens": 8,
                                        "previous_response_id": first["id"], "temperature": 0})
    return continued, first, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=1400, help="length of the first turn (about 1.4 tokens each)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    story = " ".join(f"The keeper climbed the stairs of lighthouse {i} and watched the sea."
                     for i in range(args.words // 12))
    first_turn = {"model": GEMMA_FILE, "input": f"{story}\nSummarise this.", "max_output_tokens": 16, "temperature": 0}
    flags = ("--model-name", GEMMA_FILE, "--parallel", "1", "--n-ctx", "4096", "--log-level", "warning")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        results["SQLite, same server restarted"] = continued_after_restart(
            (*flags, "--cache-dir", str(root / "cache")), root / "sqlite", first_turn)
        if not args.no_postgres:
            with running_postgres() as url:
                results["PostgreSQL, a fresh second instance"] = continued_after_restart(
                    (*flags, "--cache-dir", str(root / "pg-cache"), "--state-db", url), root / "pg", first_turn)
        _, first, _ = results["SQLite, same server restarted"]
        whole = [{"role": "user", "content": first_turn["input"]},
                 {"role": "assistant", "content": first["output"][0]["content"][0]["text"]},
                 {"role": "user", "content": "And in one word?"}]
        (root / "cold").mkdir()
        with running_server(*flags, "--cache-dir", str(root / "cold-cache"), log_dir=root / "cold") as server, \
                httpx.Client(base_url=server.base_url, timeout=600) as http:
            cold, _ = ttft(http, {"model": GEMMA_FILE, "input": whole, "max_output_tokens": 8, "temperature": 0})
    for label, (continued, _, answer) in results.items():
        usage = answer["usage"]
        print(f"{label}: {usage['input_tokens']} prompt tokens, {usage['input_tokens_details']['cached_tokens']} "
              f"from the disk cache; continued TTFT {continued * 1000:.0f} ms ({cold / continued:.1f}x faster)")
    print(f"cold (whole conversation, empty cache): TTFT {cold * 1000:.0f} ms")


if __name__ == "__main__":
    main()
