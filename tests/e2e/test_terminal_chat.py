"""The terminal chat (`python chat_cli.py`) driven through a real pseudo-terminal against a real server: a turn,
/switch, /save + /load, Ctrl-C mid-answer (the server stops generating), errors, Ctrl-C twice to quit."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sys
import time

import httpx
import pytest
import yaml

from backends.embedded_model import SMOLLM2_FILE
from settings import PROJECT_ROOT
from tests.server_process import REPO_ROOT, running_server
from tests.smollm2 import NO_END_TOKENS

# The instruct model: it answers and ends its turn, as a person chatting expects (the base model rambles on).
INSTRUCT = str(PROJECT_ROOT / "models" / SMOLLM2_FILE)
SMOLLM2_END_TOKENS = NO_END_TOKENS  # banned: an answer runs to max_tokens
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class TerminalSession:
    """`python chat_cli.py` on a pty: type into it, wait for text on its screen."""

    def __init__(self, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: becomes the session leader with the pty as its terminal
            # Ctrl-C is SIGINT, as in a user's terminal, even when pytest was started with SIGINT ignored (a
            # background job of a non-interactive shell is): an ignored signal stays ignored across exec.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.chdir(REPO_ROOT)
            env = {**os.environ, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "120"}
            os.execve(sys.executable, [sys.executable, "chat_cli.py", *args], env)
        self.screen = ""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen += ANSI.sub("", data.decode("utf-8", errors="replace"))

    def expect(self, pattern: str, timeout: float = 60) -> str:
        start = len(self.screen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen[start:])
            if match:
                return match.group(0)
            self.read(0.1)
        raise AssertionError(f"{pattern!r} did not appear; screen ends with:\n{self.screen[-1500:]}")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def send(self, line: str) -> None:
        self.type(line + "\r")

    def exited(self, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.1)
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return True
        return False

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    models = tmp_path_factory.mktemp("chat-models")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "one", "path": INSTRUCT, "settings": {"n_ctx": 2048, "parallel": 1}},
        {"id": "two", "path": INSTRUCT, "settings": {"n_ctx": 2048, "parallel": 1}},
    ]}))
    flags = ("--models-dir", str(models), "--model-name", "one", "--no-install-embedded-models")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("chat-server")) as server:
        yield server


@pytest.fixture()
def terminal(chat_server, tmp_path):
    session = TerminalSession("--base-url", f"{chat_server.base_url}/v1", "--data-dir", str(tmp_path / "saved"))
    session.expect("/help for commands", 30)
    yield session
    session.close()


def test_a_turn_switch_and_save_load_round_trip(terminal, tmp_path):
    terminal.send("Say hello.")
    terminal.expect(r"tok/s")
    terminal.send("/switch two")  # not loaded yet: the load's progress is a bar, fed by the server's events
    terminal.expect(r"loading two[\s\S]*100%[\s\S]*loaded two in \d+\.\d s\s+now talking to two")
    terminal.send("And goodbye?")
    terminal.expect(r"tok/s")
    terminal.send("/save trip")
    terminal.expect("saved to")
    saved = json.loads((tmp_path / "saved" / "trip.json").read_text())
    assert saved["model"] == "two" and [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 2
    terminal.send("/new")
    terminal.expect("new conversation")
    terminal.send("/load")
    terminal.expect("saved: trip")
    terminal.send("/load trip")
    terminal.expect("loaded trip: 4 messages, model two")


def test_errors_are_one_line_and_the_chat_goes_on(terminal):
    terminal.send("/switch nope")
    terminal.expect(r"error: 404: The model 'nope' does not exist")
    terminal.send("/set temperature hot")
    terminal.expect("error: temperature needs a float")
    terminal.send("/set max_tokens 3")
    terminal.expect("max_tokens = 3")
    terminal.send("Still there?")
    terminal.expect(r"3 tokens")


def test_ctrl_c_stops_the_answer_and_the_server(chat_server, terminal):
    terminal.send("/set max_tokens 1500")
    terminal.expect("max_tokens = 1500")
    # Ctrl-C as soon as the answer streams (the model writes hundreds of tokens here).
    terminal.send("Write a very long essay about the history of the sea, with many chapters.")
    deadline = time.monotonic() + 30
    while not httpx.get(f"{chat_server.base_url}/").json()["active_sequences"]:
        assert time.monotonic() < deadline, "the answer never started"
        time.sleep(0.05)
    time.sleep(0.3)
    terminal.type("\x03")
    terminal.expect(r"stopped")
    deadline = time.monotonic() + 10
    while httpx.get(f"{chat_server.base_url}/").json()["active_sequences"]:
        assert time.monotonic() < deadline, "the server kept generating after Ctrl-C"
        time.sleep(0.1)
    terminal.send("/set max_tokens 4")
    terminal.send("Short answer please.")
    terminal.expect(r"tok/s")


def test_ctrl_c_twice_at_the_prompt_quits(terminal):
    terminal.type("\x03")
    terminal.expect("Ctrl-C again to quit")
    terminal.type("\x03")
    assert terminal.exited()


def test_ctrl_c_while_the_question_waits_for_a_busy_server(chat_server, terminal):
    # Another client holds the only slot, so the question waits in the queue when Ctrl-C comes: before any
    # answer arrived, the chat must still say it stopped and go on (it used to die with a traceback).
    body = {"model": "one", "messages": [{"role": "user", "content": "Write a long essay about the sea."}],
            "max_tokens": 600, "stream": True, "logit_bias": SMOLLM2_END_TOKENS}
    with httpx.stream("POST", f"{chat_server.base_url}/v1/chat/completions", json=body, timeout=60) as busy:
        lines = busy.iter_lines()  # kept: a dropped iterator would close the response, freeing the slot
        next(lines)  # it holds the slot
        terminal.send("Are you there?")
        time.sleep(0.5)
        terminal.type("\x03")
        terminal.expect(r"0 tokens .* stopped")
    terminal.send("/set max_tokens 4")
    terminal.send("Short answer please.")
    terminal.expect(r"tok/s")
