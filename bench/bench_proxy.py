"""Remote engine overhead: our proxy in front of an upstream vs the upstream directly, in one run.

The upstream is a synthetic OpenAI-compatible streamer in its own process (`tests/fake_upstream.py`): every
stream sends `--tokens` chunks `--interval` seconds apart, like a GPU server at 1/interval tok/s per stream, so
what we measure is the relay, not a model. For 1 and 32 concurrent streams it reports median TTFT and aggregate
chunks/s, direct and through `python server.py --upstream`.

Targets (issue 8): added TTFT <= 5 ms median; aggregate tok/s ratio >= 0.95.

Usage: python -m bench.bench_proxy [--tokens 64] [--interval 0.01] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.server_process import REPO_ROOT, free_port, running_server


def one_stream(client: httpx.Client, base: str, model: str) -> tuple[float, int]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    start = time.perf_counter()
    first, chunks = float("nan"), 0
    with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunks += 1
                if chunks == 1:
                    first = time.perf_counter() - start
    return first, chunks


def load(base: str, model: str, concurrency: int) -> tuple[float, float]:
    """(median TTFT, aggregate chunks/s)."""
    limits = httpx.Limits(max_connections=concurrency + 4)
    with httpx.Client(timeout=120, limits=limits) as client:
        one_stream(client, base, model)  # open connections, warm up
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda _: one_stream(client, base, model), range(concurrency)))
        wall = time.perf_counter() - start
    return statistics.median(r[0] for r in results), sum(r[1] for r in results) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "tests.fake_upstream", str(port), str(args.tokens),
                                 str(args.interval)], cwd=REPO_ROOT)
    direct = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{direct}/models")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fake upstream did not start"
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as scratch:
            flags = ("--upstream", f"up={direct}", "--log-level", "warning")
            with running_server(*flags, log_dir=Path(scratch)) as proxy:
                while "up/echo" not in httpx.get(f"{proxy.base_url}/v1/models").text:
                    time.sleep(0.1)
                rows = []
                for concurrency in args.concurrency:
                    direct_ttft, direct_rate = load(direct, "echo", concurrency)
                    proxy_ttft, proxy_rate = load(f"{proxy.base_url}/v1", "up/echo", concurrency)
                    rows.append((concurrency, direct_ttft, proxy_ttft, direct_rate, proxy_rate))
    finally:
        upstream.terminate()
        upstream.wait(10)
    print(f"{'streams':>8}{'TTFT direct ms':>16}{'TTFT proxy ms':>15}{'added ms':>10}{'tok/s direct':>14}"
          f"{'tok/s proxy':>13}{'ratio':>7}")
    for concurrency, direct_ttft, proxy_ttft, direct_rate, proxy_rate in rows:
        print(f"{concurrency:>8}{direct_ttft * 1000:>16.1f}{proxy_ttft * 1000:>15.1f}"
              f"{(proxy_ttft - direct_ttft) * 1000:>10.1f}{direct_rate:>14.0f}{proxy_rate:>13.0f}"
              f"{proxy_rate / direct_rate:>7.2f}")


if __name__ == "__main__":
    main()
