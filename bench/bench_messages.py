"""Anthropic Messages vs OpenAI chat completions on the same server, model and conversations.

1. TTFT and decode tok/s streaming the same conversation through `/v1/messages` and `/v1/chat/completions`,
   interleaved run by run (each run a distinct prompt, so neither API reuses the other's cached prefix);
   target: Messages >= 0.97x chat.
2. A Claude-Code-sized request (~10k tokens of system prompt and 24 tools, streamed, `?beta=true`) sent twice:
   the second TTFT shows the prompt cache holding the prefix.

Usage: python -m bench.bench_messages [--runs 5] [--max-tokens 96] [--threads 2]
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

N_CTX = 16384  # one slot big enough for a Claude Code prompt


def question_for(run: int) -> str:
    return f"Request {run}: write a long essay about lighthouses, harbours and the sea."


def _chat(run: int, max_tokens: int) -> tuple[str, dict]:
    return "/v1/chat/completions", {"model": GEMMA_FILE, "messages": [{"role": "user", "content": question_for(run)}],
                                    "max_tokens": max_tokens, "temperature": 0, "stream": True,
                                    "stream_options": {"include_usage": True}}


def _messages(run: int, max_tokens: int) -> tuple[str, dict]:
    return "/v1/messages", {"model": GEMMA_FILE, "messages": [{"role": "user", "content": question_for(run)}],
                            "max_tokens": max_tokens, "temperature": 0, "stream": True}


def _text_and_tokens(event: dict) -> tuple[bool, int | None]:
    """(the event carries answer text, output tokens if it carries the final usage), for either API."""
    if event.get("type") == "message_delta":
        return False, event["usage"]["output_tokens"]
    if event.get("type") == "content_block_delta":
        return bool(event["delta"].get("text")), None
    if event.get("usage"):
        return False, event["usage"]["completion_tokens"]
    choices = event.get("choices") or []
    return bool(choices and choices[0]["delta"].get("content")), None


def timed_stream(http: httpx.Client, path: str, body: dict) -> tuple[float, float, int]:
    """(TTFT s, decode tok/s after the first token, output tokens)."""
    start = time.perf_counter()
    stamps, tokens = [], 0
    with http.stream("POST", path, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            has_text, usage = _text_and_tokens(json.loads(line[6:]))
            tokens = usage if usage is not None else tokens
            if has_text:
                stamps.append(time.perf_counter())
    decode = (tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return stamps[0] - start, decode, tokens


def claude_code_body(tools: int = 24) -> dict:
    """A request shaped like Claude Code's: system blocks with cache_control, a system entry in messages,
    many tools with real-looking schemas; about 10k tokens."""
    rules = " ".join(f"Rule {i}: keep changes minimal, explain the reason, and run the tests after editing." for i in range(280))
    schema = {"type": "object", "properties": {
        "path": {"type": "string", "description": "Absolute path of the file to work on."},
        "content": {"type": "string", "description": "The new content, complete, with no placeholder left."},
        "dry_run": {"type": "boolean", "description": "Only say what would change."}}, "required": ["path"]}
    return {
        "model": GEMMA_FILE, "max_tokens": 32, "stream": True, "temperature": 0,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328;"},
                   {"type": "text", "text": "You are Claude Code, a coding agent. " + rules,
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say pong."},
                     {"role": "system", "content": "<system-reminder>Answer in one word.</system-reminder>"}],
        "tools": [{"name": f"tool_{i}", "description": f"Tool {i}: reads, edits or searches files in the "
                   "repository; use it when the task needs it and never guess paths.", "input_schema": schema}
                  for i in range(tools)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    flags = ("--model-name", GEMMA_FILE, "--parallel", "1", "--n-ctx", str(N_CTX), "--n-threads", str(args.threads),
             "--log-level", "warning")
    results: dict[str, list] = {"chat": [], "messages": []}
    with tempfile.TemporaryDirectory() as scratch, running_server(*flags, log_dir=Path(scratch)) as server, \
            httpx.Client(base_url=server.base_url, timeout=600) as http:
        timed_stream(http, *_chat(999, 4))  # load and warm the model once
        for run in range(args.runs):
            for api, build in (("chat", _chat), ("messages", _messages)):
                results[api].append(timed_stream(http, *build(run * 2 + (api == "messages"), args.max_tokens)))
        body = claude_code_body()
        prompt = http.post("/v1/messages/count_tokens", json={k: body[k] for k in ("model", "system", "messages",
                                                                                  "tools")}).json()["input_tokens"]
        first = timed_stream(http, "/v1/messages?beta=true", body)
        second = timed_stream(http, "/v1/messages?beta=true", body)
    print(f"\n{'API':10} {'TTFT ms':>9} {'decode tok/s':>13}   (median of {args.runs}, {args.max_tokens} tokens)")
    medians = {}
    for api, samples in results.items():
        medians[api] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
        print(f"{api:10} {medians[api][0] * 1000:9.1f} {medians[api][1]:13.1f}")
    print(f"\ndecode ratio  messages / chat: {medians['messages'][1] / medians['chat'][1]:.3f}")
    print(f"TTFT ratio    messages / chat: {medians['messages'][0] / medians['chat'][0]:.3f} (lower is better)")
    print(f"\nClaude-Code-sized request ({prompt} prompt tokens): first TTFT {first[0] * 1000:.0f} ms, "
          f"again {second[0] * 1000:.0f} ms ({first[0] / second[0]:.1f}x faster: the prompt cache)")


if __name__ == "__main__":
    main()
