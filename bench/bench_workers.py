"""What engine worker processes cost: the same server with engines in-process (`--no-engine-workers`) and in
worker processes (the default), one after the other in one run, on the embedded gemma model.

Per mode: single-stream decode tok/s and TTFT (distinct prompts, no cached prefix), 16 concurrent streams' total
tok/s and mean TTFT, and the server's resident memory (its process and its workers) loaded vs after unloading.
Usage: python -m bench.bench_workers [--rounds 2] [--max-tokens 96] [--streams 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
from pathlib import Path
from tempfile import mkdtemp

import httpx

from backends.embedded_model import GEMMA_FILE
from tests.server_process import ServerProcess

GEMMA_ENDS = {"1": -100, "106": -100}  # <eos>, <end_of_turn>: every answer runs to max_tokens


def one_stream(base_url: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(TTFT seconds, decode tok/s after the first token, tokens)."""
    body = {"model": GEMMA_FILE, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "logit_bias": GEMMA_ENDS}
    started = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                tokens += 1
                first = first or time.perf_counter()
    ended = time.perf_counter()
    return first - started, (tokens - 1) / max(ended - first, 1e-9), tokens


def measure(workers: bool, args, tag: int) -> dict:
    flag = "--engine-workers" if workers else "--no-engine-workers"
    log_dir = Path(mkdtemp(prefix="bench-workers-"))
    server = ServerProcess("--model-name", GEMMA_FILE, "--parallel", str(args.streams), "--n-ctx",
                           str(args.streams * 512), "--no-prompt-cache", "--spec", "off", flag,
                           log_path=log_dir / "server.log")
    try:
        server.wait_ready()
        url = server.base_url
        one_stream(url, "Warm up.", 8)
        single = [one_stream(url, f"Run {tag}-{i}: tell me about owls number {i}.", args.max_tokens)
                  for i in range(3)]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.streams) as pool:
            many = list(pool.map(lambda i: one_stream(url, f"Stream {tag}-{i}: owls {i}.", args.max_tokens),
                                 range(args.streams)))
        wall = time.perf_counter() - started
        rss_loaded = httpx.get(f"{url}/", timeout=30).json()["memory"]["rss_bytes"]
        unloaded = httpx.post(f"{url}/admin/models/unload", json={"model": GEMMA_FILE}, timeout=120).json()
        return {"single_tok_s": statistics.median(s[1] for s in single),
                "single_ttft_ms": 1000 * statistics.median(s[0] for s in single),
                "multi_tok_s": sum(s[2] for s in many) / wall,
                "multi_ttft_ms": 1000 * statistics.mean(s[0] for s in many),
                "rss_loaded_mib": rss_loaded / 2**20, "rss_unloaded_mib": unloaded["rss_bytes_after"] / 2**20}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args()
    results: dict[bool, list[dict]] = {False: [], True: []}
    for round_ in range(args.rounds):  # alternated, so drift on the machine hits both modes alike
        for workers in (False, True):
            results[workers].append(measure(workers, args, round_))
            print("workers" if workers else "in-process", {k: round(v, 1) for k, v in results[workers][-1].items()},
                  flush=True)
    keys = list(results[False][0])
    print(f"{'metric':18} {'in-process':>11} {'workers':>11} {'ratio':>7}")
    for key in keys:
        before = statistics.median(r[key] for r in results[False])
        after = statistics.median(r[key] for r in results[True])
        print(f"{key:18} {before:11.1f} {after:11.1f} {after / before if before else float('nan'):7.3f}")


if __name__ == "__main__":
    main()
