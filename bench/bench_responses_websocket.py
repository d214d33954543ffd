"""An agent loop of 20 tool calls over Responses' WebSocket mode vs over HTTP SSE, on the same server in one run.

Each turn the model must call a tool (`tool_choice: required`); the loop answers with the tool's output and goes on
with `previous_response_id` and only the new item, as agents do. Over HTTP each turn is one streamed POST on a
kept-alive connection (the chain's history is read from the response store); over the WebSocket each turn is one
`response.create` on one socket (the history comes from the connection's memory), with `store` on as over HTTP,
and with `store: false`. The loops alternate, round after round, so a slower moment of this shared host falls on
both. Reported: the median loop time per transport and the ratio to HTTP.

Usage: python -m bench.bench_responses_websocket [--calls 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from backends.embedded_model import SMOLLM2_FILE
from tests.server_process import running_server

TOOL = {"type": "function", "name": "read_file", "description": "Read a file of the project.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string", "maxLength": 40}},
                       "required": ["path"], "additionalProperties": False}}
ENDS = ("response.completed", "response.incomplete", "response.failed")


def turn_body(previous: dict | None, turn: int, store: bool) -> dict:
    body = {"model": SMOLLM2_FILE, "tools": [TOOL], "tool_choice": "required", "max_output_tokens": 60,
            "temperature": 0, "store": store,
            "instructions": "You explore a code base by reading its files, one call at a time."}
    if previous is None:
        return {**body, "input": "Read the project's files one after the other, starting with README.md."}
    call = next(item for item in previous["output"] if item["type"] == "function_call")
    output = f"File {turn}: " + " ".join(f"line {i} of the file defines helper_{turn}_{i}." for i in range(6))
    return {**body, "previous_response_id": previous["id"],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": output}]}


def http_loop(base_url: str, calls: int) -> float:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        started, previous = time.perf_counter(), None
        for turn in range(calls):
            with http.stream("POST", "/v1/responses", json={**turn_body(previous, turn, True), "stream": True}) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: ") and (event := json.loads(line[6:]))["type"] in ENDS:
                        previous = event["response"]
        return time.perf_counter() - started


def socket_loop(base_url: str, calls: int, store: bool) -> float:
    with connect(base_url.replace("http://", "ws://") + "/v1/responses", max_size=None) as socket:
        started, previous = time.perf_counter(), None
        for turn in range(calls):
            socket.send(json.dumps({"type": "response.create", **turn_body(previous, turn, store)}))
            while (event := json.loads(socket.recv()))["type"] not in ENDS:
                if event["type"] == "error":
                    raise RuntimeError(event["error"])
            previous = event["response"]
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loops = {"HTTP SSE (store)": lambda url: http_loop(url, args.calls),
             "WebSocket (store)": lambda url: socket_loop(url, args.calls, True),
             "WebSocket (store: false)": lambda url: socket_loop(url, args.calls, False)}
    times: dict[str, list[float]] = {name: [] for name in loops}
    with tempfile.TemporaryDirectory() as scratch:
        flags = ("--model-name", SMOLLM2_FILE, "--parallel", "1", "--n-ctx", "8192", "--log-level", "warning",
                 "--cache-dir", str(Path(scratch) / "cache"))
        with running_server(*flags, log_dir=Path(scratch)) as server:
            socket_loop(server.base_url, 2, True)  # warm-up (the model, the first prompt's cache)
            for _ in range(args.rounds):
                for name, loop in loops.items():
                    times[name].append(loop(server.base_url))
    baseline = statistics.median(times["HTTP SSE (store)"])
    print(f"{args.calls}-tool-call agent loop, SmolLM2-135M Q4_1, median of {args.rounds} interleaved rounds:")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"  {name:26} {median:6.2f} s  ({median / args.calls * 1000:5.0f} ms a turn)  "
              f"{median / baseline:4.2f}x HTTP   runs: {', '.join(f'{t:.2f}' for t in measured)}")


if __name__ == "__main__":
    main()
