"""`pip install .` gives working console commands: the wheel is built and installed into a fresh virtual
environment (reusing the dependencies installed for the interpreter running the tests, venv or not), and the
installed `llm-server` serves a chat request and the web page from its own copies of templates/ and web/."""

from __future__ import annotations

import site
import subprocess
import sys
import time

import httpx
import pytest

from settings import PROJECT_ROOT
from tests.server_process import free_port


def _site_packages() -> list[str]:
    user_site = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    return [path for path in (*site.getsitepackages(), *user_site) if path in sys.path]


@pytest.mark.timeout(300)
def test_installed_console_command_serves(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(PROJECT_ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, cwd=tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = next(venv.glob("lib/python*/site-packages"))
    # `--system-site-packages` would expose the *base* interpreter's packages, not those of a venv running the
    # tests; a .pth file names exactly the site-packages this interpreter imports from.
    (installed / "test-dependencies.pth").write_text("\n".join(_site_packages()) + "\n")
    (wheel,) = wheels.glob("llm_server-*.whl")
    subprocess.run([venv / "bin" / "pip", "install", "--no-deps", "-q", str(wheel)], check=True)
    assert (installed / "templates" / "gemma.jinja").is_file() and (installed / "web" / "chat.js").is_file()
    help_text = subprocess.run([venv / "bin" / "llm-server", "--help"], check=True, capture_output=True, text=True)
    assert "--model-name" in help_text.stdout and "--api-key" in help_text.stdout
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    # Started from an empty directory, so nothing can be imported from the repository checkout.
    process = subprocess.Popen(
        [venv / "bin" / "llm-server", "--port", str(port), "--models-dir", str(PROJECT_ROOT / "models"),
         "--cache-dir", str(tmp_path / "cache"), "--no-install-embedded-models", "--n-ctx", "1024", "--parallel", "1"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        answer = httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                                 "max_tokens": 2}, timeout=60)
        assert answer.status_code == 200 and answer.json()["choices"]
        assert httpx.get(f"{base}/chat").status_code == 200
    finally:
        process.terminate()
        process.wait(30)
        log.close()
