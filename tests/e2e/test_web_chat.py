"""The built-in web chat page: served at /chat (and / for browsers), its JavaScript checked with node, and
driven as a person would in Debian's headless Chromium through Playwright (.ci/run installs both; in CI a skip
is a failure)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import httpx
import pytest

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from tests.server_process import REPO_ROOT

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
NODE = shutil.which("node")


def test_chat_page_and_its_assets_are_served(server):
    page = httpx.get(f"{server.base_url}/chat")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="model"', 'id="input"', 'id="stop"', 'id="new-chat"', 'id="system"', 'id="temperature"'):
        assert element in page.text
    scripts = re.findall(r'<script defer src="/chat/assets/([^"]+)"', page.text)
    styles = re.findall(r'<link rel="stylesheet"[^>]* href="/chat/assets/([^"]+)"', page.text)
    assert "vendor/marked.min.js" in scripts and "vendor/purify.min.js" in scripts and "chat.js" in scripts
    lazy = ["vendor/katex.min.js", "vendor/highlight.min.js", "vendor/katex.min.css"]  # (markdown.js loads them)
    for asset in scripts + styles + lazy + ["vendor/fonts/KaTeX_Main-Regular.woff2"]:
        response = httpx.get(f"{server.base_url}/chat/assets/{asset}")
        assert response.status_code == 200, asset
    assert "cdn" not in page.text.lower() and "http" not in page.text.replace("http-equiv", "")


def test_root_serves_the_page_to_browsers_and_json_to_clients(server):
    assert httpx.get(server.base_url, headers={"Accept": BROWSER_ACCEPT}).headers["content-type"].startswith("text/html")
    assert httpx.get(server.base_url).json()["status"] == "ready"
    assert httpx.get(server.base_url, headers={"Accept": "application/json"}).json()["status"] == "ready"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_page_scripts_parse_and_the_conversation_tree_keeps_branches():
    for script in ("chat.js", "markdown.js", "sse.js", "tree.js", "store.js", "operator.js"):
        subprocess.run([NODE, "--check", str(REPO_ROOT / "web" / script)], check=True)
    probe = """
        const sse = require(process.argv[1]), tree = require(process.argv[2]);
        const [events, rest] = sse.takeEvents('data: {"a":1}\\n\\ndata: [DONE]\\n\\ndata: {"b"');
        const c = tree.create();
        const q = tree.add(c, null, {role: "user", text: "q1"});
        const a = tree.add(c, q.id, {role: "assistant", content: "a1"});
        const q2 = tree.add(c, null, {role: "user", text: "q2"});  // an edit: a sibling of q
        const before = tree.path(c).map((n) => n.text || n.content);
        tree.switchBranch(c, q2, -1);
        const after = tree.path(c).map((n) => n.text || n.content);
        const upTo = tree.pathUpTo(c, q).map((n) => n.text);
        console.log(JSON.stringify({events, rest, before, after, upTo, position: tree.siblingPosition(c, q)}));
    """
    result = subprocess.run([NODE, "-e", probe, str(REPO_ROOT / "web" / "sse.js"), str(REPO_ROOT / "web" / "tree.js")],
                            check=True, capture_output=True, text=True)
    out = json.loads(result.stdout)
    assert out["events"] == ['{"a":1}', "[DONE]"] and out["rest"] == 'data: {"b"'
    assert out["before"] == ["q2"] and out["after"] == ["q1", "a1"] and out["upTo"] == ["q1"]
    assert out["position"] == [0, 2]


def greedy(page, max_tokens: int = 0) -> None:
    """Temperature 0 (and `max_tokens` if given) for the chosen model, set in Settings as a person does."""
    page.click("#settings-button")
    page.fill("#temperature", "0")
    page.dispatch_event("#temperature", "change")
    if max_tokens:
        page.fill("#max-tokens", str(max_tokens))
        page.dispatch_event("#max-tokens", "change")
    page.click("#close-settings")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root in a sandbox without a display or network: no setuid sandbox, no GPU, no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
# Records the assistant bubble's text length at every change, to see the answer arrive in pieces.
WATCH_LAST_ANSWER = """() => {
    window.__lengths = [];
    new MutationObserver(() => {
        const answers = document.querySelectorAll('.message.assistant .answer');
        if (answers.length) window.__lengths.push(answers[answers.length - 1].textContent.length);
    }).observe(document.querySelector('#messages'), {childList: true, subtree: true, characterData: true});
}"""


def _default_model(base_url: str) -> str:
    (card,) = [card for card in httpx.get(f"{base_url}/v1/models").json()["data"] if card["default"]]
    return card["id"]


def _wait_idle(base_url: str, timeout: float = 10.0) -> None:
    """The server has no sequence running (a stopped answer stopped generating there too)."""
    deadline = time.monotonic() + timeout
    while httpx.get(base_url, headers={"Accept": "application/json"}).json()["active_sequences"]:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.1)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`)")
def test_chat_in_a_real_browser(server):
    from playwright import sync_api  # a test dependency (requirements-dev.txt): never skipped

    default_model, other_model = SMOLLM2_FILE, GEMMA_FILE  # the base model rambles on: there is time to Stop it
    assert _default_model(server.base_url) == default_model
    sent_models, console_errors = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        page.on("request", lambda request: request.url.endswith("/v1/chat/completions")
                and sent_models.append(json.loads(request.post_data)["model"]))
        page.goto(f"{server.base_url}/chat")
        page.wait_for_function("document.querySelectorAll('#model option').length > 1")
        assert page.input_value("#model") == default_model  # a new visitor talks to the server's default model

        # Greedy from the start: a sampled first answer can run to the slot's whole context (seen: an emoji loop
        # of ~1000 tokens), and the third turn carries it.
        greedy(page)

        # Send, and watch the answer stream in.
        page.evaluate(WATCH_LAST_ANSWER)
        page.fill("#input", "Say hello.")
        page.press("#input", "Enter")
        page.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=60000)
        answer = page.text_content(".message.assistant .answer")
        lengths = page.evaluate("window.__lengths")
        assert answer.strip() and len({n for n in lengths if 0 < n < len(answer)}) >= 2, lengths

        # Switch model, ask for something long, stop it mid-answer: the server stops generating too.
        page.select_option("#model", other_model)
        page.fill("#input", "Write a very long essay about the sea.")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.message.assistant').length >= 2 && "
                               "document.querySelectorAll('.message.assistant .answer')[1].textContent.length > 5")
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.includes('stopped')")
        _wait_idle(server.base_url)
        stopped_answer = page.inner_text(".message.assistant >> nth=1 >> .answer")

        # A reload keeps the conversation (IndexedDB) and the chosen model (localStorage).
        page.reload()
        page.wait_for_function("document.querySelectorAll('.message').length >= 4")
        page.wait_for_function("document.querySelectorAll('#model option').length > 1")
        assert page.input_value("#model") == other_model
        assert page.inner_text(".message.assistant >> nth=1 >> .answer") == stopped_answer

        # Back to the first model, same conversation (greedy: a short answer, whatever came before).
        page.select_option("#model", default_model)
        greedy(page)
        page.fill("#input", "Thanks. One more sentence, please.")
        page.click("#send")
        try:
            page.wait_for_function("document.querySelectorAll('.message.assistant').length >= 3 && "
                                   "document.querySelector('#status').textContent.includes('tok/s')", timeout=120000)
        except sync_api.TimeoutError:
            raise AssertionError(f"no third answer; the page shows:\n{page.inner_text('main')[-2000:]}\n"
                                 f"status: {page.inner_text('#status')}") from None
        browser.close()
    assert sent_models == [default_model, other_model, default_model]
    assert console_errors == []


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`)")
def test_the_page_shows_a_bar_while_the_chosen_model_loads(tmp_path):
    """A transformers model's first load (torch is imported then, seconds here) is long enough to watch."""
    import yaml
    from playwright import sync_api

    from tests.server_process import running_server
    from tests.tiny_hf_model import build_tiny_llama

    models = tmp_path / "models"
    build_tiny_llama(models / "tiny-llama")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "tiny", "path": str(models / "tiny-llama"), "engine": "transformers"}]}))
    flags = ("--models-dir", str(models), "--model-name", SMOLLM2_FILE)
    with running_server(*flags, log_dir=tmp_path) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{server.base_url}/chat")
        page.wait_for_function("document.querySelectorAll('#model option').length > 1")
        page.select_option("#model", "tiny")
        page.fill("#input", "hi")
        page.press("#input", "Enter")
        page.wait_for_selector("#loading", state="visible", timeout=30000)
        label = page.inner_text("#load-label")
        assert label.startswith("Loading tiny: ") and "%" in label
        page.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=60000)
        assert page.is_hidden("#loading")  # gone once the model answers
        browser.close()
