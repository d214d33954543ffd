"""Claude Code itself (npm `@anthropic-ai/claude-code`, its native binary; `.ci/run` installs it when absent) in
headless mode (`claude -p`) against our server and nothing else: its real request (`/v1/messages?beta=true`,
streaming, ~12k tokens of system prompt and 12 tools, a system entry inside messages, adaptive thinking,
max_tokens 32000) is answered, and it prints the model's answer.

The model is the base gemma (the one embedded model whose context holds that prompt), greedy, with a model-level
stop string (`defaults.stop` in models.yaml): a 270M base model never ends its turn on Claude Code's prompt, and
Claude Code counts an answer that runs into max_tokens as a failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from backends.embedded_model import GEMMA_FILE
from settings import PROJECT_ROOT
from tests.server_process import running_server

CLAUDE_CODE_VERSION = "2.1.328"
INSTALL_DIR = Path(os.environ.get("CLAUDE_CODE_DIR", Path.home() / ".cache" / "llm-server-tests" / "claude-code"))
BINARY = INSTALL_DIR / "node_modules" / "@anthropic-ai" / "claude-code-linux-x64" / "claude"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("claude-code")
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": [{
        "id": "local-coder", "path": str(PROJECT_ROOT / "models" / GEMMA_FILE),
        "defaults": {"temperature": 0, "stop": ["\n"]}}]}))
    flags = ("--models-file", str(folder / "models.yaml"), "--model-name", "local-coder", "--n-ctx", "16384",
             "--parallel", "1", "--api-key", "sk-claude-code", "--log-level", "info")
    with running_server(*flags, log_dir=folder) as process:
        yield process


@pytest.mark.skipif(not BINARY.exists(), reason=f"Claude Code is not installed: npm install --prefix {INSTALL_DIR} "
                    f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}")
def test_claude_code_answers_through_our_messages_api(server, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ANTHROPIC_BASE_URL": server.base_url,
           "ANTHROPIC_AUTH_TOKEN": "sk-claude-code", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_TELEMETRY": "1"}
    done = subprocess.run([str(BINARY), "-p", "Reply with the single word pong.", "--model", "local-coder"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = done.stdout.strip()
    assert answer and "API Error" not in answer
    log = server.log_path.read_text()
    [request] = [line for line in log.splitlines() if "path=/v1/messages" in line and "status=200" in line]
    prompt_tokens = int(request.split("prompt_tokens=")[1].split()[0])
    assert prompt_tokens > 8000  # Claude Code's whole system prompt and tools reached the model
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": "Bearer sk-claude-code"}).text
    [served] = [line for line in metrics.splitlines() if line.startswith("llm_requests_total{")
                and 'route="/v1/messages"' in line and 'status="200"' in line]
    assert float(served.split()[-1]) == 1.0  # one request, answered: no retry, no continuation
