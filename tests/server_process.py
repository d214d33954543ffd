"""Starts the real server (`python server.py`) on a free loopback port for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def strict_client(base_url: str, key: str = "x", **options) -> openai.OpenAI:
    """The official client as our acceptance tests use it: every response validated against OpenAI's types."""
    return openai.OpenAI(base_url=base_url, api_key=key, _strict_response_validation=True, **options)


class ServerProcess:
    def __init__(self, *flags: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        if "--cache-dir" not in flags:  # tests never share the repository's prompt cache (or each other's)
            flags = (*flags, "--cache-dir", str(log_path.parent / "prompt-cache"))
        command = [sys.executable, str(REPO_ROOT / "server.py"), "--port", str(self.port), *flags]
        self._log = open(log_path, "wb")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LLM_SERVER_")}
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**clean, **(env or {})})

    def openai_client(self, key: str = "x", *, bare: bool = False, **options) -> openai.OpenAI:
        """A strict client of this server at `/v1` (or at the bare root, as some clients are configured)."""
        return strict_client(self.base_url if bare else f"{self.base_url}/v1", key, **options)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text(errors='replace')[-4000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready:\n{self.log_path.read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@contextmanager
def running_server(*flags: str, log_dir: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A ready server for the duration of the block, stopped afterwards whatever happens (`env`: variables set for
    it, the test's own LLM_SERVER_* ones never are)."""
    process = ServerProcess(*flags, log_path=log_dir / "server.log", env=env)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
