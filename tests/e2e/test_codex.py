"""Codex CLI itself (npm `@openai/codex`, its native binary; `.ci/run` installs it when absent) running `codex exec`
against our `/v1/responses` and nothing else: its real request (~8k tokens of developer messages and tools, a
`namespace` tool group, a hosted `web_search` tool, `include: ["reasoning.encrypted_content"]`, `reasoning.summary`,
`store: false`, streaming) is answered and it prints the model's answer.

Decisions it exposed: hosted tools (web_search...) are ignored with a logged warning, not refused (Codex always
lists web_search; a 400 stopped it at once); `include` values for data we never produce are ignored with a
warning; a `namespace` group's function tools are offered as plain function tools. The model is the base gemma
(its context holds the prompt), greedy, with a model-level stop string so its answer ends: a 270M base model never
ends its turn on Codex's prompt by itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from backends.embedded_model import GEMMA_FILE
from settings import PROJECT_ROOT
from tests.server_process import running_server

CODEX_VERSION = "0.169.0"
INSTALL_DIR = Path(os.environ.get("CODEX_DIR", Path.home() / ".cache" / "llm-server-tests" / "codex"))
BINARY = INSTALL_DIR / "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("codex")
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": [{
        "id": "local-coder", "path": str(PROJECT_ROOT / "models" / GEMMA_FILE),
        "defaults": {"temperature": 0, "stop": ["\n"]}}]}))
    flags = ("--models-file", str(folder / "models.yaml"), "--model-name", "local-coder", "--n-ctx", "16384",
             "--parallel", "1", "--log-level", "info")
    with running_server(*flags, log_dir=folder) as process:
        yield process


@pytest.mark.skipif(not BINARY.exists(), reason=f"Codex is not installed: npm install --prefix {INSTALL_DIR} "
                    f"@openai/codex@{CODEX_VERSION}")
def test_codex_exec_answers_through_our_responses_api(server, tmp_path):
    (tmp_path / "config.toml").write_text(
        f'model = "local-coder"\nmodel_provider = "local"\n[model_providers.local]\nname = "local"\n'
        f'base_url = "{server.base_url}/v1"\nwire_api = "responses"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(tmp_path)}
    done = subprocess.run([str(BINARY), "exec", "--skip-git-repo-check", "Say pong."], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() and "ERROR" not in done.stdout + done.stderr  # stdout: the final answer alone
    assert "tokens used" in done.stderr  # the run's transcript
    log = server.log_path.read_text()
    [request] = [line for line in log.splitlines() if "path=/v1/responses" in line and "status=200" in line]
    assert int(request.split("prompt_tokens=")[1].split()[0]) > 5000  # Codex's instructions and tools reached it
    assert "Ignoring the hosted tool 'web_search'" in log
