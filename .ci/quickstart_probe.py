"""Proves README's quick start: `python server.py` as written (port from LLM_SERVER_PORT, a free one), then one
chat completion and GET /v1/models, then the server is stopped. Standard library only: it runs in the fresh venv
that has nothing but requirements.txt.

Usage (from the repository root, inside that venv): python .ci/quickstart_probe.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

READY_TIMEOUT_S = 600  # the first start places the embedded models into models/ (gemma is assembled: ~250 MB)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_ready(base: str, server: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"server exited with {server.returncode}:\n{open(log_path).read()[-4000:]}")
        try:
            if call(f"{base}/health", timeout=2)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    sys.exit(f"server not ready after {READY_TIMEOUT_S} s:\n{open(log_path).read()[-4000:]}")


def probe(base: str) -> None:
    status, models = call(f"{base}/v1/models")
    assert status == 200, (status, models)
    ids = [card["id"] for card in models["data"]]
    default = [card["id"] for card in models["data"] if card.get("default")]
    print(f"GET /v1/models -> {status}: {ids}, default {default}")
    assert default == ["SmolLM2-135M-Instruct.Q4_1.gguf"] and "gemma-3-270m-q4_k_m.gguf" in ids, models
    body = {"messages": [{"role": "user", "content": "Tell me about lighthouses."}], "max_tokens": 48}
    status, reply = call(f"{base}/v1/chat/completions", body)
    assert status == 200, (status, reply)
    message = reply["choices"][0]["message"]
    print(f"POST /v1/chat/completions -> {status}: model {reply['model']}, {reply['usage']}: {message['content']!r}")
    assert reply["model"] == default[0] and message["role"] == "assistant" and message["content"].strip(), reply


def main() -> None:
    port = free_port()
    log_path = os.path.join(tempfile.mkdtemp(), "server.log")
    env = {**os.environ, "LLM_SERVER_PORT": str(port)}
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "server.py"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        started = time.monotonic()
        wait_ready(f"http://127.0.0.1:{port}", server, log_path)
        print(f"python server.py ready in {time.monotonic() - started:.1f} s")
        probe(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(60)
    log_text = open(log_path, errors="replace").read()
    assert "llama_model_loader: - kv" not in log_text, "llama.cpp's kv dump reached the info-level log"
    print(f"server stopped (exit {server.returncode}); its log: {len(log_text.splitlines())} lines")


if __name__ == "__main__":
    main()
