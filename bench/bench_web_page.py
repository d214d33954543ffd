"""The web page's speed, measured in Debian's Chromium (Playwright), against llama-server's own web app in the same
run: first contentful paint of a fresh visit (no browser cache), and how smoothly a long answer streams (the gaps
between animation frames while ~N tokens arrive, and the page's long tasks, each > 50 ms of main-thread work).

Ours streams from gemma-3-270m (a base model: it rambles on to --max-tokens); llama-server's page is only loaded
(its paint is the baseline; streaming through its UI is not scripted here).

Usage: python -m bench.bench_web_page [--visits 5] [--max-tokens 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from playwright import sync_api

from backends.embedded_model import GEMMA_FILE
from bench.bench_servers import MODEL_PATH, Process, llama_server_binary
from tests.e2e.test_web_chat import CHROMIUM, CHROMIUM_ARGS
from tests.server_process import free_port

PAINT = """() => new Promise((resolve) => {
    const find = () => performance.getEntriesByName('first-contentful-paint')[0];
    if (find()) return resolve(find().startTime);
    new PerformanceObserver(() => find() && resolve(find().startTime)).observe({type: 'paint', buffered: true});
})"""
WATCH_FRAMES = """() => {
    window.__gaps = []; window.__long = [];
    let last = performance.now();
    const tick = (now) => {
        window.__gaps.push(now - last); last = now;
        if (!window.__stopWatch) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    new PerformanceObserver((list) => list.getEntries().forEach((e) => window.__long.push(e.duration)))
        .observe({type: 'longtask', buffered: false});
}"""


def first_paints(browser, url: str, visits: int) -> list[float]:
    paints = []
    for _ in range(visits):
        context = browser.new_context()  # a fresh visitor: nothing cached
        page = context.new_page()
        page.goto(url)
        paints.append(page.evaluate(PAINT))
        context.close()
    return paints


def stream_smoothness(browser, base_url: str, max_tokens: int) -> dict:
    page = browser.new_page()
    page.goto(f"{base_url}/chat")
    page.wait_for_function("document.querySelectorAll('#model option').length > 1")
    page.select_option("#model", GEMMA_FILE)
    page.click("#settings-button")
    page.fill("#max-tokens", str(max_tokens))
    page.dispatch_event("#max-tokens", "change")
    page.click("#close-settings")
    page.fill("#input", "Write a very long story about the sea, with many chapters.")
    page.evaluate(WATCH_FRAMES)
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=600000)
    page.evaluate("window.__stopWatch = true")
    gaps, long_tasks = page.evaluate("window.__gaps"), page.evaluate("window.__long")
    status = page.inner_text("#status")
    page.close()
    gaps.sort()
    return {"status": status, "frames": len(gaps), "median_gap_ms": statistics.median(gaps),
            "p99_gap_ms": gaps[int(len(gaps) * 0.99) - 1], "max_gap_ms": gaps[-1],
            "long_tasks": len(long_tasks), "long_task_ms_total": sum(long_tasks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visits", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-web-"))
    port = free_port()
    ours = Process("ours", [sys.executable, "server.py", "--port", str(port), "--cache-dir", str(folder / "cache"),
                            "--n-threads", "2"], "/health", port)
    binary = llama_server_binary()
    theirs = None
    if binary:
        their_port = free_port()
        theirs = Process("llama-server", [binary, "-m", str(MODEL_PATH), "--port", str(their_port), "-t", "2"],
                         "/health", their_port)
    try:
        assert ours.wait_ready(), ours.log.name
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            our_paints = first_paints(browser, f"{ours.base_url}/chat", args.visits)
            their_paints = (first_paints(browser, theirs.base_url + "/", args.visits)
                            if theirs and theirs.wait_ready() else [])
            smooth = stream_smoothness(browser, ours.base_url, args.max_tokens)
            browser.close()
    finally:
        ours.stop()
        if theirs:
            theirs.stop()
    print(f"first contentful paint, median of {args.visits} fresh visits: ours {statistics.median(our_paints):.0f} ms"
          + (f", llama-server's page {statistics.median(their_paints):.0f} ms (ours/theirs "
             f"{statistics.median(our_paints) / statistics.median(their_paints):.2f})" if their_paints else ""))
    print(f"streaming ({smooth['status']}): {smooth['frames']} frames, gap median {smooth['median_gap_ms']:.1f} ms, "
          f"p99 {smooth['p99_gap_ms']:.1f} ms, max {smooth['max_gap_ms']:.1f} ms; long tasks {smooth['long_tasks']} "
          f"({smooth['long_task_ms_total']:.0f} ms in all)")


if __name__ == "__main__":
    main()
