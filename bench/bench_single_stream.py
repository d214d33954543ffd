"""Single-stream decode speed and time-to-first-token: our server vs the same model in-process.

Baselines, run one after another on the same machine and the same threads (never concurrently):
  * llama-cpp-python's high-level API in-process (`Llama.create_completion`, streaming) - what a Python
    user gets without a server;
  * a raw low-level loop (`llama_decode` + greedy C sampler, no server, no HTTP) - the ceiling.
Then our server (a real `python server.py` process, `--parallel 1`) over HTTP with streaming.

Each run uses a distinct prompt so no engine reuses a cached prefix (cold TTFT).
Usage: python -m bench.bench_single_stream [--runs 3] [--max-tokens 128] [--threads 2] [--api chat|responses]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

from backends.embedded_model import GEMMA_FILE
from settings import PROJECT_ROOT
from tests.server_process import ServerProcess

MODEL_PATH = PROJECT_ROOT / "models" / GEMMA_FILE
N_CTX = 2048


def question_for(run: int) -> str:
    return f"Request {run}: write a long essay about lighthouses, harbours and the sea."


def prompt_for(run: int) -> str:
    """The prompt our server renders for a one-message chat (gemma turn format), for the in-process runs."""
    return f"<bos><start_of_turn>user\n{question_for(run)}<end_of_turn>\n<start_of_turn>model\n"


def summarize(name: str, samples: list[tuple[float, float, int]]) -> dict:
    ttft = statistics.median(s[0] for s in samples)
    decode = statistics.median(s[1] for s in samples)
    tokens = statistics.median(s[2] for s in samples)
    print(f"{name:34s} TTFT {ttft * 1000:7.1f} ms   decode {decode:6.1f} tok/s   ({tokens:.0f} tokens)")
    return {"ttft_s": ttft, "decode_tok_s": decode}


def bench_high_level(runs: int, max_tokens: int, threads: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(str(MODEL_PATH), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)
    samples = []
    for run in range(runs):
        start = time.perf_counter()
        stamps = []
        for chunk in llm.create_completion(prompt_for(run), max_tokens=max_tokens, temperature=0, stream=True):
            if chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
        samples.append((stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)))
    del llm
    return summarize("llama-cpp-python in-process", samples)


def bench_raw_loop(runs: int, max_tokens: int, threads: int) -> dict:
    import llama_cpp

    from backends.base import SamplingParams
    from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel
    from backends.llamacpp.sampling import SamplerChain

    model = LlamaModel(MODEL_PATH)
    config = ContextConfig(N_CTX, 1, 512, 512, threads, threads, flash_attn=False)  # as our server's auto on a CPU
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def fill(tokens: list[int], first_pos: int) -> None:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, first_pos + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        batch.n_tokens = len(tokens)

    samples = []
    for run in range(runs):
        context = LlamaContext(model, config)
        tokens = model.tokenize(prompt_for(run))
        sampler = SamplerChain(model, SamplingParams(temperature=0), tokens)
        start = time.perf_counter()
        stamps = []
        fill(tokens, 0)
        assert context.decode(batch) == 0
        row, position = len(tokens) - 1, len(tokens)
        for _ in range(max_tokens):
            token, _ = sampler.sample(context.ptr, row)
            stamps.append(time.perf_counter())
            if model.is_end_of_generation(token):
                break
            model.piece(token)
            fill([token], position)
            assert context.decode(batch) == 0
            row, position = 0, position + 1
        samples.append((stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)))
        sampler.free()
        context.free()
    llama_cpp.llama_batch_free(batch)
    model.free()
    return summarize("raw llama_decode loop (ceiling)", samples)


def _request(api: str, run: int, max_tokens: int) -> tuple[str, dict]:
    if api == "responses":
        return "/v1/responses", {"input": question_for(run), "max_output_tokens": max_tokens, "temperature": 0,
                                 "stream": True}
    return "/v1/chat/completions", {
        "messages": [{"role": "user", "content": question_for(run)}], "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }


def _read(api: str, event: dict) -> tuple[bool, int | None]:
    """(the event carries answer text, completion tokens if it carries the usage)."""
    if api == "responses":
        if event["type"] in ("response.completed", "response.incomplete"):
            return False, event["response"]["usage"]["output_tokens"]
        return event["type"] == "response.output_text.delta" and bool(event["delta"]), None
    if event.get("usage"):
        return False, event["usage"]["completion_tokens"]
    return bool(event["choices"] and event["choices"][0]["delta"].get("content")), None


def bench_server(runs: int, max_tokens: int, threads: int, log_dir: Path, api: str = "chat") -> dict:
    server = ServerProcess(
        "--model-name", GEMMA_FILE, "--parallel", "1", "--n-ctx", str(N_CTX), "--n-threads", str(threads), "--log-level", "warning",
        log_path=log_dir / "bench_server.log",
    )
    samples = []
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=300) as http:
            for run in range(runs):
                path, body = _request(api, run, max_tokens)
                start = time.perf_counter()
                stamps, tokens = [], None
                with http.stream("POST", path, json=body) as response:
                    for line in response.iter_lines():
                        if not line.startswith("data: {"):
                            continue
                        has_text, usage = _read(api, json.loads(line[6:]))
                        tokens = usage if usage is not None else tokens
                        if has_text:
                            stamps.append(time.perf_counter())
                samples.append((stamps[0] - start, (tokens - 1) / (stamps[-1] - stamps[0]), tokens))
    finally:
        server.stop()
    return summarize(f"our server (HTTP, streaming, {api} API)", samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--api", choices=("chat", "responses"), default="chat",
                        help="which streaming API of ours to time: /v1/chat/completions or /v1/responses")
    args = parser.parse_args()
    log_dir = Path("/tmp")
    high = bench_high_level(args.runs, args.max_tokens, args.threads)
    raw = bench_raw_loop(args.runs, args.max_tokens, args.threads)
    ours = bench_server(args.runs, args.max_tokens, args.threads, log_dir, args.api)
    print()
    print(f"decode ratio  ours / in-process llama-cpp-python: {ours['decode_tok_s'] / high['decode_tok_s']:.2f}")
    print(f"decode ratio  ours / raw loop ceiling:             {ours['decode_tok_s'] / raw['decode_tok_s']:.2f}")
    print(f"TTFT ratio    ours / in-process llama-cpp-python:  {ours['ttft_s'] / high['ttft_s']:.2f} (lower is better)")


if __name__ == "__main__":
    main()
