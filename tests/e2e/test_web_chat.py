"""The built-in web chat page: served at /chat (and / for browsers), its JavaScript checked with node, and
driven in headless Chromium through Playwright where both are installed (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from tests.server_process import REPO_ROOT

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
NODE = shutil.which("node")


def test_chat_page_and_its_assets_are_served(server):
    page = httpx.get(f"{server.base_url}/chat")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="model"', 'id="input"', 'id="stop"', 'id="new-chat"', 'id="system"', 'id="temperature"'):
        assert element in page.text
    for asset, kind in (("chat.js", "javascript"), ("markdown.js", "javascript"), ("chat.css", "text/css")):
        response = httpx.get(f"{server.base_url}/chat/assets/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert "cdn" not in page.text.lower() and "http" not in page.text.replace("http-equiv", "")


def test_root_serves_the_page_to_browsers_and_json_to_clients(server):
    assert httpx.get(server.base_url, headers={"Accept": BROWSER_ACCEPT}).headers["content-type"].startswith("text/html")
    assert httpx.get(server.base_url).json()["status"] == "ready"
    assert httpx.get(server.base_url, headers={"Accept": "application/json"}).json()["status"] == "ready"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_page_scripts_parse_and_markdown_is_safe():
    for script in ("chat.js", "markdown.js"):
        subprocess.run([NODE, "--check", str(REPO_ROOT / "web" / script)], check=True)
    probe = """
        const m = require(process.argv[1]);
        const html = m.renderMarkdown("# T\\n**b** <img src=x onerror=alert(1)> `<i>`\\n```js\\nif (a < b) {}\\n```\\n"
            + "- one\\n- two\\n[ok](https://example.org) [bad](javascript:alert(1))");
        const [events, rest] = m.takeEvents('data: {"a":1}\\n\\ndata: [DONE]\\n\\ndata: {"b"');
        console.log(JSON.stringify({html, events, rest}));
    """
    result = subprocess.run([NODE, "-e", probe, str(REPO_ROOT / "web" / "markdown.js")], check=True,
                            capture_output=True, text=True)
    out = json.loads(result.stdout)
    html = out["html"]
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<code>&lt;i&gt;</code>" in html and "<strong>b</strong>" in html and "<h1>T</h1>" in html
    assert '<pre><code class="language-js">if (a &lt; b) {}</code></pre>' in html
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in html
    assert '<a href="https://example.org"' in html and 'href="javascript' not in html
    assert out["events"] == ['{"a":1}', "[DONE]"] and out["rest"] == 'data: {"b"'


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian package `chromium`)")
def test_chat_in_a_real_browser(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        page = browser.new_page()
        page.goto(f"{server.base_url}/chat")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.fill("#input", "Say hello.")
        page.click("#send")
        page.wait_for_selector(".message.assistant", timeout=30000)
        page.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=60000)
        assert page.inner_text(".message.assistant")
        # Stop mid-answer: a long request, then the stop button.
        page.fill("#temperature", "0.8")
        page.fill("#input", "Write a very long essay about the sea.")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.message.assistant').length >= 2 && "
                               "document.querySelectorAll('.message.assistant')[1].textContent.length > 5")
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.includes('stopped')")
        # A reload keeps the conversation (localStorage); switching the model keeps working.
        page.reload()
        page.wait_for_function("document.querySelectorAll('.message').length >= 4")
        page.select_option("#model", index=0)
        page.fill("#input", "One more.")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.message.assistant').length >= 3")
        browser.close()
