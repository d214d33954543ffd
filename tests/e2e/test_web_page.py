"""The web page as a person uses it, in Debian's Chromium through Playwright (.ci/run installs it): conversations
kept across reloads (rename, search, delete, export, import), edit with branches, regenerate, continue a cut answer,
text-file attachments, settings per model, dark theme, a phone-sized screen, the operator's view for admin keys only,
and untrusted Markdown that cannot run script. The server has an admin and a user key, as a shared one would."""

from __future__ import annotations

import json

import httpx
import pytest

from backends.embedded_model import SMOLLM2_FILE
from tests.e2e.test_web_chat import CHROMIUM, CHROMIUM_ARGS
from tests.server_process import running_server

ADMIN, USER = "sk-web-admin", "sk-web-user"
DONE = "document.querySelector('#status').textContent.includes('tok/s')"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    flags = ("--admin-key", ADMIN, "--api-key", USER, "--n-ctx", "4096", "--parallel", "2")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("web-page")) as process:
        yield process


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api

    assert CHROMIUM, "Chromium is not installed (Debian package `chromium`)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Visit:
    """One browser context (its own IndexedDB and localStorage) on the page, collecting console errors."""

    def __init__(self, browser, server, key: str = USER, **context_options) -> None:
        self.context = browser.new_context(**context_options)
        if key:  # a returning visitor: the key was saved in Settings on an earlier visit
            self.context.add_init_script("localStorage.getItem('llm-server-settings') || localStorage.setItem("
                                         f"'llm-server-settings', JSON.stringify({{apiKey: {json.dumps(key)}}}))")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.bodies: list[dict] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("response", lambda response: response.status >= 400
                     and self.errors.append(f"{response.status} {response.url}"))
        self.page.on("request", lambda request: request.url.endswith("/v1/chat/completions")
                     and self.bodies.append(json.loads(request.post_data)))
        self.page.on("dialog", lambda dialog: dialog.accept(self.answer) if dialog.type == "prompt"
                     else dialog.accept())
        self.answer = ""
        self.page.goto(f"{server.base_url}/chat")
        self.page.wait_for_function("document.querySelectorAll('#model option').length > 1")

    def settings(self, **values: str) -> None:
        """Open Settings, set fields (by id with - for _), close it: as a person does."""
        page = self.page
        page.click("#settings-button")
        for name, value in values.items():
            field = "#" + name.replace("_", "-")
            if page.eval_on_selector(field, "e => e.tagName") == "SELECT":
                page.select_option(field, value)
            else:
                page.fill(field, value)
                page.dispatch_event(field, "change")
        page.click("#close-settings")

    def ask(self, text: str) -> None:
        answers = self.page.locator(".message.assistant").count()
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")
        self.page.wait_for_function(f"document.querySelectorAll('.message.assistant').length > {answers} && {DONE}",
                                    timeout=60000)
        self.page.wait_for_function("!document.querySelector('#send').disabled")
        # (then the conversation is stored and the list redrawn, both asynchronous)
        self.page.wait_for_function("(document.querySelector('#conversations .conversation.current') || {})"
                                    ".dataset?.id === ChatApp.current().id")

    def titles(self) -> list[str]:
        return self.page.locator("#conversations .conversation .open").all_inner_texts()

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors


def test_conversations_are_kept_renamed_searched_deleted_exported_and_imported(server, browser, tmp_path):
    visit = Visit(browser, server)
    page = visit.page
    visit.settings(temperature="0", max_tokens="8")
    visit.ask("Name a fruit.")
    page.keyboard.press("Control+k")  # a new chat
    assert page.locator(".message").count() == 0
    visit.ask("Name a planet.")
    assert visit.titles() == ["Name a planet.", "Name a fruit."]
    page.reload()
    page.wait_for_selector("#conversations .conversation")
    assert visit.titles() == ["Name a planet.", "Name a fruit."]
    assert page.inner_text(".message.user") == "Name a planet.\nEdit"  # the current one is open again
    visit.answer = "Planets"
    page.hover("#conversations .conversation >> nth=0")
    page.click("#conversations .conversation >> nth=0 >> .rename")
    page.wait_for_function("document.querySelector('#conversations .open').textContent === 'Planets'")
    page.fill("#search", "fruit")
    page.wait_for_function("document.querySelectorAll('#conversations .conversation').length === 1")
    assert visit.titles() == ["Name a fruit."]
    page.fill("#search", "")
    page.dispatch_event("#search", "input")
    page.wait_for_function("document.querySelectorAll('#conversations .conversation').length === 2")
    assert visit.titles() == ["Planets", "Name a fruit."]
    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "conversations.json"
    download.value.save_as(exported)
    assert [c["title"] for c in json.loads(exported.read_text())["conversations"]] == ["Planets", "Name a fruit."]
    page.hover("#conversations .conversation >> nth=1")
    page.click("#conversations .conversation >> nth=1 >> .delete")
    page.wait_for_function("document.querySelectorAll('#conversations .conversation').length === 1")
    page.reload()
    page.wait_for_selector("#conversations .conversation")
    assert visit.titles() == ["Planets"]
    visit.close()

    elsewhere = Visit(browser, server)  # another browser, same key: the server kept them for the key
    elsewhere.page.wait_for_selector("#conversations .conversation")
    assert elsewhere.titles() == ["Planets"]
    elsewhere.close()

    other_key = Visit(browser, server, ADMIN)  # another key: none of them, until the export is imported
    assert other_key.titles() == []
    other_key.page.set_input_files("#import-file", str(exported))
    other_key.page.wait_for_function("document.querySelectorAll('#conversations .conversation').length === 2")
    other_key.page.click("#conversations .conversation >> nth=1 >> .open")
    other_key.page.wait_for_selector(".message.assistant")
    assert other_key.page.inner_text(".message.user").startswith("Name a fruit.")
    other_key.close()


def test_a_browser_can_keep_its_conversations_to_itself(server, browser):
    visit = Visit(browser, server)
    page = visit.page
    page.click("#settings-button")
    page.uncheck("#keep-on-server")
    page.fill("#max-tokens", "4")
    page.dispatch_event("#max-tokens", "change")
    page.click("#close-settings")
    visit.ask("Private question.")
    page.click("#settings-button")
    assert page.inner_text("#storage-note") == "kept in this browser only"
    page.click("#close-settings")
    page.reload()
    page.wait_for_selector("#conversations .conversation")
    assert visit.titles()[0] == "Private question."
    visit.close()
    assert "Private question." not in [c["title"] for c in httpx.get(
        f"{server.base_url}/chat/conversations", headers={"Authorization": f"Bearer {USER}"}).json()["data"]]


def test_the_conversation_store_is_per_key_and_checks_what_it_is_given(server):
    def call(method: str, path: str, key: str = USER, **kwargs):
        return httpx.request(method, f"{server.base_url}/chat/conversations{path}",
                             headers={"Authorization": f"Bearer {key}"}, **kwargs)

    body = {"id": "c1", "title": "Fifty % off_sale", "created": 1, "updated": 5, "roots": [], "nodes": {}}
    assert call("PUT", "/c1", json=body).status_code == 200
    assert call("GET", "/c1").json() == body
    assert call("GET", "/c1", ADMIN).status_code == 404  # another key's
    assert [c["id"] for c in call("GET", "?q=zebra").json()["data"]] == []
    assert [c["id"] for c in call("GET", "?q=% off_").json()["data"]] == ["c1"]  # (LIKE wildcards taken literally)
    assert [c["id"] for c in call("GET", "?q=%_%").json()["data"]] == []
    assert call("PUT", "/c2", json=body).status_code == 400  # the id in the path and the body differ
    assert call("PUT", "/c1", content=b"{not json").status_code == 400
    assert call("PUT", "/bad%20id", json=dict(body, id="bad id")).status_code == 400
    assert call("DELETE", "/c1").json() == {"id": "c1", "deleted": True}
    error = call("DELETE", "/c1").json()["error"]
    assert error["code"] == "conversation_not_found" and error["type"] == "invalid_request_error"
    assert httpx.get(f"{server.base_url}/chat/conversations").status_code == 401  # no key


def test_edit_keeps_branches_regenerate_adds_versions_and_a_cut_answer_continues(server, browser):
    visit = Visit(browser, server)
    page = visit.page
    visit.settings(temperature="0", max_tokens="6")
    visit.ask("Count from one to twenty in words, separated by commas.")
    first_answer = page.inner_text(".message.assistant .answer")
    assert "length" in page.inner_text(".message.assistant .stats")  # cut at 6 tokens: Continue is offered
    page.click(".message.assistant >> text=Continue")
    page.wait_for_function(DONE)
    page.wait_for_function("!document.querySelector('#send').disabled")
    continued = page.inner_text(".message.assistant .answer")
    assert continued.startswith(first_answer.strip()) and len(continued) > len(first_answer), (first_answer, continued)
    assert visit.bodies[-1]["continue_final_message"] is True
    assert visit.bodies[-1]["messages"][-1] == {"role": "assistant", "content": first_answer.strip()} or \
        visit.bodies[-1]["messages"][-1]["content"].strip() == first_answer.strip()

    page.click(".message.assistant >> text=Regenerate")  # a second version of the answer, beside the first
    page.wait_for_function("document.querySelector('.message.assistant .branch')")
    page.wait_for_function("!document.querySelector('#send').disabled")
    assert page.inner_text(".message.assistant .branch") == "‹\n2 / 2\n›"

    page.click(".message.user >> text=Edit")  # edit the question: a new branch with its own answer
    page.fill(".message.user .edit-box", "Count from one to five in words.")
    page.click("text=Save & send")
    page.wait_for_function("document.querySelector('.message.user .branch') && "
                           "!document.querySelector('#send').disabled")
    assert page.inner_text(".message.user .text") == "Count from one to five in words."
    page.click(".message.user .branch >> text=‹")  # back to the first question, with its two answers
    assert page.inner_text(".message.user .text").startswith("Count from one to twenty")
    assert page.inner_text(".message.assistant .branch") == "‹\n2 / 2\n›"
    page.reload()  # the branches are kept
    page.wait_for_selector(".message.user .branch")
    assert page.inner_text(".message.user .branch") == "‹\n1 / 2\n›"
    visit.close()


def test_a_text_file_goes_with_the_message_and_settings_stay_per_model(server, browser, tmp_path):
    visit = Visit(browser, server)
    page = visit.page
    visit.settings(temperature="0.3", max_tokens="5", system="You answer in French.")
    notes = tmp_path / "notes.py"
    notes.write_text("def area(r):\n    return 3.14159 * r * r\n")
    page.set_input_files("#attach", str(notes))
    page.wait_for_selector("#attachments .attachment")
    visit.ask("What does this file compute?")
    sent = visit.bodies[-1]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 5
    assert sent["messages"][0] == {"role": "system", "content": "You answer in French."}
    assert "notes.py" in sent["messages"][-1]["content"] and "3.14159 * r * r" in sent["messages"][-1]["content"]
    assert "notes.py" in page.inner_text(".message.user .files")
    page.reload()
    page.wait_for_function("document.querySelectorAll('#model option').length > 1")
    page.click("#settings-button")
    assert page.input_value("#temperature") == "0.3" and page.input_value("#system") == "You answer in French."
    page.click("#close-settings")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    other = [value for value in options if value != SMOLLM2_FILE][0]
    page.select_option("#model", other)
    page.click("#settings-button")
    assert page.input_value("#temperature") == "0.7"  # another model: its own settings (the defaults)
    page.click("#close-settings")
    page.fill("#input", "Write a very long story about the sea.")  # (the base model rambles: time to stop it)
    page.press("#input", "Enter")
    page.wait_for_function("(document.querySelector('.message.assistant:last-of-type .answer') || {}).textContent"
                           "?.length > 5")
    page.keyboard.press("Escape")  # Esc stops, as Stop does
    page.wait_for_function("document.querySelector('#status').textContent.includes('stopped')")
    page.wait_for_function("[...document.querySelectorAll('.message.assistant .stats')].pop().textContent"
                           ".includes('stopped')")
    assert page.locator(".message.assistant >> nth=-1 >> text=Continue").count() == 1
    visit.close()


def test_untrusted_markdown_renders_richly_and_runs_no_script(server, browser, tmp_path):
    """An answer is model output (or an imported file): HTML in it, event handlers, javascript: links and SVG
    scripts are dropped, remote images are not fetched (no request leaves the page); code, tables and math render."""
    hostile = ("Here:\n\n<img src=x onerror=\"window.__pwned=1\">\n\n![tracker](https://example.invalid/t.png)\n\n"
               "<script>window.__pwned=2</script>\n\n"
               "[click](javascript:window.__pwned=3) <a href=\"javascript:window.__pwned=4\">a</a>\n\n"
               "<svg><script>window.__pwned=5</script></svg> <iframe src=\"javascript:parent.__pwned=6\"></iframe>\n\n"
               "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint(\"hi\")\n```\n\nEuler: $e^{i\\pi} + 1 = 0$\n\n"
               "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$\n")
    conversation = {"id": "rich", "title": "Rich answer", "created": 1, "updated": 2, "rootIndex": 0,
                    "roots": ["q"], "nodes": {
                        "q": {"id": "q", "parent": None, "children": ["a"], "selected": 0, "role": "user",
                              "text": "Show me everything."},
                        "a": {"id": "a", "parent": "q", "children": [], "selected": 0, "role": "assistant",
                              "content": hostile, "reasoning": "",
                              "stats": {"model": "m", "ttft": 0.1, "tokens": 42, "rate": 50.0, "cached": 7}}}}
    file = tmp_path / "rich.json"
    file.write_text(json.dumps({"conversations": [conversation]}))
    visit = Visit(browser, server)
    page = visit.page
    page.set_input_files("#import-file", str(file))
    page.wait_for_selector("#conversations .conversation >> text=Rich answer")
    page.click("#conversations .conversation >> text=Rich answer")
    page.wait_for_selector(".message.assistant table")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    answer = page.locator(".message.assistant .answer")
    assert answer.locator("script, iframe, img[onerror], [onerror]").count() == 0
    assert answer.locator("a[href^='javascript']").count() == 0
    assert answer.locator("pre code.hljs span").count() >= 1 and answer.locator(".copy-code").count() == 1
    assert answer.locator(".katex").count() >= 2 and answer.locator(".katex-display").count() == 1
    assert "42 tokens" in page.inner_text(".message.assistant .stats") and "7 cached" in page.inner_text(".stats")
    visit.close()


def test_dark_theme_phone_screen_and_the_operator_view_for_admins_only(server, browser):
    user = Visit(browser, server, USER)
    assert user.page.is_hidden("#operator-button")  # a user key: no operator view
    user.close()

    admin = Visit(browser, server, ADMIN, viewport={"width": 390, "height": 844})  # a phone
    page = admin.page
    assert page.evaluate("document.querySelector('#sidebar').getBoundingClientRect().right") <= 0  # off screen
    page.click("#open-sidebar")
    page.wait_for_function("getComputedStyle(document.querySelector('#sidebar')).transform === 'none'")
    page.click("#close-sidebar")
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.click("#theme")  # system -> light
    page.click("#theme")  # light -> dark
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light
    page.reload()
    page.wait_for_function("document.documentElement.dataset.theme === 'dark'")  # remembered
    page.wait_for_selector("#operator-button", state="visible")
    # The top bar keeps to one row at phone width, every control in view.
    boxes = page.evaluate("[...document.querySelectorAll('#topbar > :not([hidden]):not(.spacer)')]"
                          ".filter((e) => e.offsetWidth).map((e) => e.getBoundingClientRect().toJSON())")
    middles = [box["top"] + box["height"] / 2 for box in boxes]
    assert len(boxes) >= 5 and max(middles) - min(middles) < 4 and max(box["right"] for box in boxes) <= 390
    page.click("#operator-button")
    page.wait_for_function("document.querySelectorAll('#operator-models tbody tr').length >= 2")
    assert "sequences running" in page.inner_text("#operator-summary")
    keys = page.inner_text("#operator-keys")
    assert "(admin)" in keys and "(user)" in keys and ADMIN not in keys  # labels, never the keys themselves
    page.click("#close-operator")
    admin.close()
