"""Replicas of our server publishing KV-cache events, and the real vllm-router (PyPI `vllm-router`, its Rust
binary) in front of them: for tests/e2e/test_replicas.py and bench/bench_replicas.py."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server_process import ServerProcess, free_port

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
BLOCK = 16


@contextlib.contextmanager
def replicas(tmp_path: Path, count: int, *flags: str):
    """`count` servers publishing KV events (with `flags` besides ours): [(server, events endpoint)]. They share
    this machine's cores (one thread each unless `flags` say otherwise): llama.cpp processes that each spin
    threads on every core slow each other down many times over."""
    started = []
    try:
        for index in range(count):
            endpoint, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            folder = tmp_path / f"replica-{index}"
            folder.mkdir()
            server = ServerProcess("--model-name", MODEL, "--parallel", "8", "--n-ctx", "8192", "--no-prompt-cache",
                                   "--n-threads", "1", "--kv-events", endpoint, "--kv-events-replay", replay,
                                   "--kv-event-block-size", str(BLOCK), *flags, log_path=folder / "server.log")
            server.kv_events_replay = replay
            started.append((server, endpoint))
        for server, _ in started:
            server.wait_ready()
        yield started
    finally:
        for server, _ in started:
            server.stop()


@contextlib.contextmanager
def vllm_router(tmp_path: Path, workers, policy: str, *flags: str, replay: bool = False):
    """The router in front of `workers` with `policy` (and `flags`); its base URL. With `replay`, a kv_aware router
    also asks the replicas' replay sockets for the events it missed."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("vllm-router")), "--host", "127.0.0.1", "--port", str(port),
               "--prometheus-port", str(free_port()), "--policy", policy, *flags,
               "--worker-urls", *[server.base_url for server, _ in workers]]
    if policy == "kv_aware":
        for server, endpoint in workers:
            command += ["--kv-event-source", f"{server.base_url}={endpoint}"]
            if replay:
                command += ["--kv-event-replay-source", f"{server.base_url}={server.kv_events_replay}"]
        command += ["--kv-event-block-size", str(BLOCK), "--kv-event-model", MODEL]
    log = open(tmp_path / f"router-{policy}.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / f"router-{policy}.log").read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "vllm-router did not become ready"
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(20)
        log.close()
