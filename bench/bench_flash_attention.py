"""Flash attention on or off, for generation on the CPU: our server with `--flash-attn on` against `--flash-attn off`
(what `auto` picks on a CPU-only machine), same run, same models, one request at a time.

For each embedded model and prompt length: the time to the first token (the prompt's evaluation) and the decode
speed after it (tokens/s over --tokens tokens, end tokens banned so every answer is that long), medians of --runs.
Each prompt starts with a fresh number, so no request reuses another's prefix (the disk cache is off).

Usage: python -m bench.bench_flash_attention [--runs 3] [--tokens 64] [--words 40 700]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import httpx

from bench.bench_servers import Process
from settings import GEMMA_FILE, SMOLLM2_FILE
from tests.server_process import free_port

END_TOKENS = {"0": -100, "1": -100, "2": -100, "4": -100, "106": -100}  # SmolLM2's and gemma's end tokens


def one_answer(base_url: str, model: str, words: int, tokens: int, run: int) -> tuple[float, float, int]:
    """(ms to the first token, decode tokens/s after it, prompt tokens) of one streamed answer."""
    prompt = f"Note {run}-{time.time_ns()}: " + " ".join(f"item{i} is ready" for i in range(words))
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "logit_bias": END_TOKENS, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = usage = None
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            usage = chunk.get("usage") or usage
    ended = time.perf_counter()
    return (first - started) * 1000, (usage["completion_tokens"] - 1) / (ended - first), usage["prompt_tokens"]


def measure(model: str, flash: str, args) -> dict[int, tuple[float, float, int]]:
    port = free_port()
    server = Process(f"fa-{flash}", [sys.executable, "server.py", "--port", str(port), "--model-name", model,
                                     "--flash-attn", flash, "--parallel", "1", "--n-ctx", "8192",
                                     "--no-prompt-cache"], "/health", port)
    try:
        if not server.wait_ready():
            raise RuntimeError(f"our server did not start: see {server.log.name}")
        one_answer(server.base_url, model, 5, 4, -1)  # warm up
        results = {}
        for words in args.words:
            answers = [one_answer(server.base_url, model, words, args.tokens, run) for run in range(args.runs)]
            results[words] = (statistics.median(a[0] for a in answers), statistics.median(a[1] for a in answers),
                              answers[0][2])
        return results
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--words", type=int, nargs="+", default=[40, 700], help="prompt lengths (~3 tokens a word)")
    args = parser.parse_args()
    print(f"{'model':<34} {'prompt':>6} {'TTFT on':>9} {'TTFT off':>9} {'off/on':>7} "
          f"{'tok/s on':>9} {'tok/s off':>9} {'off/on':>7}")
    for model in (SMOLLM2_FILE, GEMMA_FILE):
        on, off = measure(model, "on", args), measure(model, "off", args)
        for words in args.words:
            (ttft_on, tps_on, prompt), (ttft_off, tps_off, _) = on[words], off[words]
            print(f"{model:<34} {prompt:>6} {ttft_on:>9.0f} {ttft_off:>9.0f} {ttft_off / ttft_on:>7.2f} "
                  f"{tps_on:>9.1f} {tps_off:>9.1f} {tps_off / tps_on:>7.2f}")


if __name__ == "__main__":
    main()
