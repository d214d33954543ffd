"""Screenshots of the web page for README (docs/screenshots/*.png): the main view with a real answer, a rich answer
(code, a table, math), the settings and the operator's view, in light and dark, plus a phone-sized screen.

Usage (from the repository root, Chromium installed): python -m tests.web_screenshots
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from playwright import sync_api

from tests.e2e.test_web_chat import CHROMIUM, CHROMIUM_ARGS
from tests.server_process import running_server

OUT = Path(__file__).parent.parent / "docs" / "screenshots"
RICH = ("Here is a function and its cost.\n\n```python\ndef area(radius: float) -> float:\n"
        "    \"\"\"The area of a circle.\"\"\"\n    return math.pi * radius ** 2\n```\n\n"
        "| radius | area |\n|---|---|\n| 1 | 3.14 |\n| 2 | 12.57 |\n\n"
        "The formula is $A = \\pi r^2$, and over a disc:\n\n"
        "$$\\int_0^{2\\pi}\\int_0^r \\rho\\,d\\rho\\,d\\theta = \\pi r^2$$\n")


def rich_conversation() -> dict:
    return {"id": "rich", "title": "Area of a circle", "created": 1, "updated": 2, "rootIndex": 0, "roots": ["q"],
            "nodes": {"q": {"id": "q", "parent": None, "children": ["a"], "selected": 0, "role": "user",
                            "text": "Write a Python function for the area of a circle, with a table and the formula."},
                      "a": {"id": "a", "parent": "q", "children": [], "selected": 0, "role": "assistant",
                            "content": RICH, "reasoning": "The user wants code, a table and LaTeX.",
                            "stats": {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "ttft": 0.21, "tokens": 118,
                                      "rate": 71.4, "cached": 0, "reasoningTokens": 12}}}}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="screenshots-"))
    (folder / "rich.json").write_text(json.dumps({"conversations": [rich_conversation()]}))
    with running_server("--n-ctx", "4096", log_dir=folder) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for theme in ("light", "dark"):
            page = browser.new_page(viewport={"width": 1280, "height": 800}, color_scheme=theme)
            page.goto(f"{server.base_url}/chat")
            page.wait_for_function("document.querySelectorAll('#model option').length > 1")
            page.fill("#input", "Give me three tips for writing clear commit messages.")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=120000)
            page.screenshot(path=str(OUT / f"main-{theme}.png"))
            page.set_input_files("#import-file", str(folder / "rich.json"))
            page.wait_for_selector("#conversations .conversation >> text=Area of a circle")
            page.click("#conversations .conversation >> text=Area of a circle")
            page.wait_for_selector(".message.assistant .katex-display")
            page.click(".message.assistant .thinking summary")
            page.screenshot(path=str(OUT / f"rich-answer-{theme}.png"))
            page.click("#settings-button")
            page.screenshot(path=str(OUT / f"settings-{theme}.png"))
            page.click("#close-settings")
            page.click("#operator-button")  # (no keys configured: everyone is an administrator)
            page.wait_for_function("document.querySelectorAll('#operator-models tbody tr').length >= 2")
            page.wait_for_timeout(4500)  # a few rate samples
            page.screenshot(path=str(OUT / f"operator-{theme}.png"))
            page.close()
        phone = browser.new_page(viewport={"width": 390, "height": 844}, color_scheme="light")
        phone.goto(f"{server.base_url}/chat")
        phone.wait_for_function("document.querySelectorAll('#model option').length > 1")
        phone.fill("#input", "Say hello in French.")
        phone.press("#input", "Enter")
        phone.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=120000)
        phone.screenshot(path=str(OUT / "phone.png"))
        browser.close()
    print("\n".join(sorted(str(p) for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
