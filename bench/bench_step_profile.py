"""Where one scheduler step's wall time goes, for 1, 4, 8 and 16 decoding sequences, with and without speculation.

The real server runs in this process (uvicorn on a loopback port, the real llama.cpp engine and GGUF), with its engine
in this process too (--no-engine-workers: by default the same scheduler runs in a worker process, whose functions
could not be timed from here); the streaming clients run in a child process, so their work is not counted here. Timers are wrapped around the scheduler's own
functions (exclusive time: a function's time excludes the timed functions it calls), so the table splits a step into:

  llama_decode   the one `llama_decode` of the step (C; the GIL is released)
  sampling       the sampler chain per row (greedy/top-k... in C, plus the Python call around it)
  speculation    drafting (n-gram lookups), the drafter's bookkeeping per token, verification loop, KV cut-back
  detokenize     token -> bytes -> UTF-8 text
  stop/steering  stop-string filter, answer steering (budgets, grammar-forced tokens)
  hand-off       building deltas and handing them to the event loop (call_soon_threadsafe)
  batch          putting tokens into the llama_batch
  other          the rest of the step's Python (the loop over slots, admission, bookkeeping)

and, beside the step, the CPU the event loop's thread spent per step (from /proc: turning deltas into SSE chunks,
JSON, writing to sockets). On two cores that CPU is taken from llama.cpp's threads, so it slows decoding too.

Workload: the code rewrite of bench_speculative (the answer copies its input, where speculation acts), each
stream renaming to its own name, temperature 0, --max-tokens tokens.

Usage: python -m bench.bench_step_profile [--sequences 1 4 8 16] [--max-tokens 128] [--model gemma|smollm2]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import threading
import time
from collections import defaultdict

import httpx
import uvicorn

from api.app import create_app
from backends import text_output
from backends.answer_steering import Steering
from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from backends.llamacpp import model as llama_model
from backends.llamacpp import sampling, scheduler, sequences, speculation, speculative_steps
from bench.bench_speculative import CODE
from settings_cli import settings_from_cli
from tests.server_process import free_port

MODELS = {"gemma": GEMMA_FILE, "smollm2": SMOLLM2_FILE}
PHASES = ["llama_decode", "sampling", "speculation", "detokenize", "stop/steering", "hand-off", "batch", "other"]


class StepTimers:
    """Exclusive time per phase, per thread: a timed function's time minus the timed functions it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.tokens = 0
        self._local = threading.local()

    def wrap(self, owner: object, name: str, phase: str) -> None:
        original = getattr(owner, name)
        timers = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            stack = timers._stack()
            stack.append(0.0)  # time spent in timed callees
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = stack.pop()
                timers.seconds[phase] += elapsed - inner
                if stack:
                    stack[-1] += elapsed
        setattr(owner, name, timed)

    def _stack(self) -> list[float]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def reset(self) -> None:
        self.seconds.clear()
        self.steps = self.tokens = 0


def install(timers: StepTimers) -> None:
    timers.wrap(scheduler.Scheduler, "_step", "other")
    timers.wrap(llama_model.LlamaContext, "decode", "llama_decode")
    timers.wrap(sampling.SamplerChain, "sample", "sampling")
    timers.wrap(sampling.SamplerChain, "accept", "sampling")
    for name in ("add_drafts", "verify", "drop_unverified"):
        timers.wrap(speculative_steps.SpeculativeSteps, name, "speculation")
    for name in ("push", "budget", "lookup", "verified"):
        timers.wrap(speculation.SequenceDrafter, name, "speculation")
    timers.wrap(llama_model.LlamaModel, "piece", "detokenize")
    timers.wrap(text_output.IncrementalDetokenizer, "push", "detokenize")
    timers.wrap(text_output.StopStringFilter, "push", "stop/steering")
    for name in ("observe", "forced_tokens", "boost_for"):
        timers.wrap(Steering, name, "stop/steering")
    timers.wrap(sequences.Slot, "emit_pending", "hand-off")
    timers.wrap(sequences.Slot, "add_to_batch", "batch")
    original_step = scheduler.Scheduler._step

    def counted_step(self):  # decode-only steps (a step reading a prompt is not counted), tokens generated
        live = [slot for slot in self.slots if slot.job is not None]
        before = sum(slot.completion_tokens for slot in live)
        prefilling, kept = any(slot.prefilling for slot in live), dict(timers.seconds)
        original_step(self)
        if prefilling:
            timers.seconds.clear()
            timers.seconds.update(kept)
            return
        timers.steps += 1
        timers.tokens += sum(slot.completion_tokens for slot in live) - before
    scheduler.Scheduler._step = counted_step


def thread_cpu_seconds(native_id: int) -> float:
    """User + system CPU of one thread of this process (Linux /proc, clock ticks)."""
    with open(f"/proc/self/task/{native_id}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_clients(base_url: str, model: str, streams: int, max_tokens: int, speculative: bool, results) -> None:
    """Child process: `streams` concurrent streaming chat requests; puts (completion tokens, seconds) in results."""
    import concurrent.futures

    def one(index: int) -> int:
        content = (f"{CODE}\nRewrite the Python code above, renaming the function `load_orders` to "
                   f"`read_orders_{index}` everywhere. Output the complete code and nothing else.")
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                "speculative": speculative}
        tokens = 0
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                    tokens = usage["completion_tokens"]
        return tokens

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        tokens = sum(pool.map(one, range(streams)))
    results.put((tokens, time.perf_counter() - start))


def profile(base_url: str, model: str, streams: int, args, speculative: bool, timers: StepTimers,
            threads: dict[str, int]) -> dict:
    context = multiprocessing.get_context("spawn")
    warm = context.Queue()
    run_clients(base_url, model, 1, 8, speculative, warm)  # (prompt into the cache: prefill is not profiled)
    results = context.Queue()
    timers.reset()
    cpu_before = {name: thread_cpu_seconds(tid) for name, tid in threads.items()}
    client = context.Process(target=run_clients, args=(base_url, model, streams, args.max_tokens, speculative,
                                                       results))
    client.start()
    tokens, seconds = results.get()
    client.join()
    cpu = {name: thread_cpu_seconds(tid) - cpu_before[name] for name, tid in threads.items()}
    steps = max(timers.steps, 1)
    row = {phase: 1000 * timers.seconds.get(phase, 0.0) / steps for phase in PHASES}
    row["step"] = sum(row.values())
    row["event loop cpu"] = 1000 * cpu["event loop"] / steps
    row["tok/step"] = timers.tokens / steps
    row["tok/s"] = tokens / seconds
    return row


def server_for(args) -> tuple[uvicorn.Server, str]:
    settings = settings_from_cli(["--model-name", MODELS[args.model], "--parallel", "16", "--n-ctx", str(16 * 1024),
                                  "--n-threads", str(args.threads), "--log-level", "warning", "--no-engine-workers",
                                  *args.flags.split()])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    return server, f"http://127.0.0.1:{port}"


def wait_ready(base_url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def print_table(rows: list[tuple[int, bool, dict]]) -> None:
    columns = ["tok/s", "tok/step", "step", *PHASES, "event loop cpu"]
    print("\nms per scheduler step (exclusive time per phase; event loop cpu: its thread's CPU per step)")
    print(f"{'seqs':>5} {'spec':>5}" + "".join(f"{c:>15}" for c in columns))
    for streams, speculative, row in rows:
        print(f"{streams:>5} {'on' if speculative else 'off':>5}" + "".join(f"{row[c]:>15.2f}" for c in columns))
    print("\nshare of the step (%)")
    print(f"{'seqs':>5} {'spec':>5}" + "".join(f"{c:>15}" for c in PHASES))
    for streams, speculative, row in rows:
        print(f"{streams:>5} {'on' if speculative else 'off':>5}"
              + "".join(f"{100 * row[c] / row['step']:>15.1f}" for c in PHASES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", choices=list(MODELS), default="gemma")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flags", default="", help="extra server flags, e.g. '--spec-max-sequences 16'")
    args = parser.parse_args()
    timers = StepTimers()
    install(timers)
    server, base_url = server_for(args)
    threads = {"event loop": threading.get_native_id()}  # uvicorn runs here, in the main thread (signal handlers)

    def drive() -> None:
        try:
            wait_ready(base_url)
            rows = []
            for streams in args.sequences:
                for speculative in (False, True):
                    rows.append((streams, speculative, profile(base_url, MODELS[args.model], streams, args,
                                                               speculative, timers, threads)))
                    print(f"{streams} seqs, speculation {'on' if speculative else 'off'}: "
                          f"{rows[-1][2]['tok/s']:.1f} tok/s", flush=True)
            print_table(rows)
        finally:
            server.should_exit = True
    threading.Thread(target=drive, name="profile-driver", daemon=True).start()
    server.run()


if __name__ == "__main__":
    main()
