"""Images in, through llama.cpp's mtmd and a projector, against the real server: the embedded gemma-3-270m with an
mmproj the test builds (tests/tiny_projectors.py: a tiny random Gemma 3 vision tower converted by llama.cpp's own
converter). Random weights: the tests assert mechanics, not descriptions. An image changes the logits (vs none,
vs another image); the same image gives the same answer; a repeated image is served from the cached KV (memory,
then disk after a restart) and a different one never is; bad images are a 400 (or 413) and the server goes on;
Responses `input_image` and Anthropic `image` blocks reach the same engine; http(s) images are fetched when the
operator allows it.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import math
import struct
import threading
import wave

import anthropic
import httpx
import pytest
import yaml
from PIL import Image

from backends.embedded_model import GEMMA_FILE
from settings import PROJECT_ROOT
from tests.greedy_agreement import assert_same_or_parted_at_near_tie
from tests.server_process import running_server
from tests.tiny_projectors import IMAGE_TOKENS, build_gemma3_mmproj, build_qwen2_audio_mmproj

GEMMA = PROJECT_ROOT / "models" / GEMMA_FILE
QUESTION = "What is in this picture? Answer in one sentence."


def png(color, size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


RED, BLUE = png((220, 30, 30)), png((30, 30, 220))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vision-models")
    mmproj = build_gemma3_mmproj(folder / "projector" / "mmproj-tiny-gemma3.gguf")
    audio = build_qwen2_audio_mmproj(folder / "projector" / "mmproj-tiny-audio.gguf")
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "gemma-vision", "path": str(GEMMA), "mmproj": str(mmproj)},
        {"id": "gemma-audio", "path": str(GEMMA), "mmproj": str(audio), "settings": {"n_ctx": 4096, "parallel": 1}},
        {"id": "gemma-text", "path": str(GEMMA)},
    ]}))
    return folder


def _start(models, log_dir, cache_dir):
    return running_server("--models-dir", str(models), "--model-name", "gemma-vision", "--no-install-embedded-models",
                          "--parallel", "2", "--n-ctx", "4096", "--cache-min-tokens", "16", "--media-fetch",
                          "--max-media-bytes", "300000", "--cache-dir", str(cache_dir), log_dir=log_dir)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("vision-cache")


@pytest.fixture(scope="module")
def server(models, cache_dir, tmp_path_factory):
    with _start(models, tmp_path_factory.mktemp("vision-server"), cache_dir) as process:
        yield process


def _ask(server, image: bytes | None, question: str = QUESTION, model: str = "gemma-vision", **extra) -> httpx.Response:
    content: list[dict] = [{"type": "text", "text": question}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    body = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8,
            "logprobs": True, "top_logprobs": 2, **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)


def _answer(server, image: bytes | None, question: str = QUESTION) -> dict:
    response = _ask(server, image, question)
    assert response.status_code == 200, response.text
    return response.json()


def _tokens(answer: dict) -> list[dict]:
    return answer["choices"][0]["logprobs"]["content"]


def _cached(answer: dict) -> int:
    return answer["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_the_card_says_vision_and_a_text_model_refuses_images(server):
    card = httpx.get(f"{server.base_url}/v1/models/gemma-vision").json()
    assert card["capabilities"]["vision"] is True and card["capabilities"]["audio"] is False
    refused = _ask(server, RED, model="gemma-text")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages[0].content[0].type"
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF0000WAVE").decode(), "format": "wav"}}
    body = {"model": "gemma-vision", "messages": [{"role": "user", "content": [audio, {"type": "text", "text": "hi"}]}]}
    refused = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages[0].content[0]"


def test_an_image_changes_the_logits_and_counts_its_tokens(server):
    plain, red, blue = _answer(server, None), _answer(server, RED), _answer(server, BLUE)
    assert red["usage"]["prompt_tokens"] >= plain["usage"]["prompt_tokens"] + IMAGE_TOKENS
    first = [_tokens(answer)[0] for answer in (plain, red, blue)]
    assert len({(entry["token"], round(entry["logprob"], 4)) for entry in first}) == 3


def test_the_same_image_again_is_read_from_the_cache_and_answers_the_same(server):
    cold = _answer(server, RED, "Describe the colours you see.")
    warm = _answer(server, RED, "Describe the colours you see.")
    again = _answer(server, RED, "Describe the colours you see.")
    assert _cached(warm) >= IMAGE_TOKENS and _cached(again) == _cached(warm)
    assert _tokens(warm) == _tokens(again)  # same regime: identical, logprobs included
    assert_same_or_parted_at_near_tie(_tokens(cold), _tokens(warm), "cold vs warm")  # prefixes round apart
    # Another image in the same place shares only the text before it.
    other = _answer(server, BLUE, "Describe the colours you see.")
    assert _cached(other) < _cached(warm) - IMAGE_TOKENS + 1


def test_bad_images_are_refused_and_the_server_goes_on(server):
    truncated = RED[: len(RED) // 2]
    huge = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(huge, format="PNG")  # small file, 100 megapixels
    cases = {"truncated": (truncated, 400), "huge": (huge.getvalue(), 400), "not an image": (b"hello world", 400),
             "too many bytes": (png((1, 2, 3)) + b"\0" * 400_000, 413)}
    for name, (data, status) in cases.items():
        response = _ask(server, data)
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"]["param"].startswith("messages[0].content[0]"), name
    assert _answer(server, BLUE)["choices"][0]["message"]["content"] is not None


def test_images_through_responses_and_anthropic_messages(server):
    text_only = httpx.post(f"{server.base_url}/v1/responses", timeout=300, json={
        "model": "gemma-vision", "input": QUESTION, "max_output_tokens": 4}).json()
    responses = httpx.post(f"{server.base_url}/v1/responses", timeout=300, json={
        "model": "gemma-vision", "max_output_tokens": 4, "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": data_url(RED)}, {"type": "input_text", "text": QUESTION}]}]}).json()
    assert responses["status"] in ("completed", "incomplete"), responses  # incomplete: max_output_tokens
    assert responses["usage"]["input_tokens"] >= text_only["usage"]["input_tokens"] + IMAGE_TOKENS
    client = anthropic.Anthropic(base_url=server.base_url, api_key="x")
    message = client.messages.create(model="gemma-vision", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(BLUE).decode()}},
        {"type": "text", "text": QUESTION}]}])
    read = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)  # Anthropic splits off cached
    assert read >= text_only["usage"]["input_tokens"] + IMAGE_TOKENS


def test_an_http_image_is_fetched_when_the_operator_allows_it(server):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/red.png" else 404)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            if self.path == "/red.png":
                self.wfile.write(RED)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{host.server_address[1]}"
        body = {"model": "gemma-vision", "max_tokens": 4, "temperature": 0, "logprobs": True, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{base}/red.png"}},
                                         {"type": "text", "text": QUESTION}]}]}
        fetched = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["usage"]["prompt_tokens"] == _answer(server, RED)["usage"]["prompt_tokens"]
        body["messages"][0]["content"][0]["image_url"]["url"] = f"{base}/missing.png"
        missing = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
        assert missing.status_code == 400 and "404" in missing.json()["error"]["message"]
    finally:
        host.shutdown()


def _conversation(server, image: bytes, turns: list, max_tokens: int = 8) -> dict:
    """Ask `turns[-1]` after earlier question/answer turns (answers given), the image in the first question."""
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                             {"type": "text", "text": turns[0]}]}]
    for turn in turns[1:]:
        messages += [{"role": "assistant", "content": turn[0]}, {"role": "user", "content": turn[1]}]
    body = {"model": "gemma-vision", "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_restarted_server_restores_the_image_prefix_from_disk(models, cache_dir, tmp_path):
    question = "Is this picture warm or cold?"
    with _start(models, tmp_path, cache_dir) as first:
        # One token: the state kept on disk is then exactly this prompt, a prefix of the next turn's
        # (a longer answer may not render back into the same tokens, which is about templates, not images).
        asked = _conversation(first, BLUE, [question], max_tokens=1)
    follow_up = [question, ("Cold.", "Why do you think so?")]
    with _start(models, tmp_path, cache_dir) as second:  # the conversation goes on after a restart
        restored = _conversation(second, BLUE, follow_up)
        assert _cached(restored) == asked["usage"]["prompt_tokens"]  # image included, read back from disk
        cache = httpx.get(f"{second.base_url}/cache").json()
        assert cache["disk_hits"] == 1
        assert _cached(_conversation(second, RED, follow_up)) < _cached(restored) - IMAGE_TOKENS


def test_the_web_page_sends_a_pasted_image(server):
    from playwright import sync_api  # a test dependency (requirements-dev.txt): never skipped

    from tests.e2e.test_web_chat import CHROMIUM, CHROMIUM_ARGS, greedy

    sent, errors = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: request.url.endswith("/v1/chat/completions")
                and sent.append(json.loads(request.post_data)))
        page.goto(f"{server.base_url}/chat")
        page.wait_for_function("document.querySelectorAll('#model option').length > 1")
        page.select_option("#model", "gemma-vision")
        greedy(page, max_tokens=24)  # (gemma base would write on to the end of its context)
        page.evaluate("""(encoded) => {  // what pasting a copied picture delivers: a ClipboardEvent with a PNG file
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "red.png", { type: "image/png" }));
            document.querySelector("#input").dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
        }""", base64.b64encode(RED).decode())
        page.wait_for_selector("#attachments img")
        page.fill("#input", "What is in this picture?")
        page.press("#input", "Enter")
        page.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=120000)
        assert page.locator(".message.user img").count() == 1 and page.locator("#attachments img").count() == 0
        browser.close()
    assert errors == []
    image, text = sent[0]["messages"][-1]["content"]
    assert image == {"type": "image_url", "image_url": {"url": data_url(RED)}} and text["type"] == "text"
    assert sent[0]["max_tokens"] == 24


def test_the_terminal_chat_sends_an_image(server, tmp_path):
    from tests.e2e.test_terminal_chat import TerminalSession

    picture = tmp_path / "red.png"
    picture.write_bytes(RED)
    terminal = TerminalSession("--base-url", f"{server.base_url}/v1", "--model", "gemma-vision",
                               "--data-dir", str(tmp_path / "saved"))
    try:
        terminal.expect("/help for commands", 30)
        terminal.send("/set max_tokens 24")  # (gemma base would write on to the end of its context)
        terminal.expect("max_tokens = 24")
        terminal.send(f"/image {tmp_path / 'missing.png'}")
        terminal.expect("usage: /image PATH")
        terminal.send(f"/image {picture}")
        terminal.expect("attached red.png")
        terminal.send("What is in this picture?")
        terminal.expect("tok/s", 120)
        terminal.send("/save picture")
        terminal.expect("saved to")
    finally:
        terminal.close()
    saved = json.loads((tmp_path / "saved" / "picture.json").read_text())
    image, text = saved["messages"][0]["content"]
    assert image == {"type": "image_url", "image_url": {"url": data_url(RED)}}
    assert text == {"type": "text", "text": "What is in this picture?"}
    assert saved["messages"][1]["role"] == "assistant"


def wav(frequency: float, seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * frequency * i / 16000)))
                                 for i in range(int(16000 * seconds))))
    return buffer.getvalue()


def _hear(server, sound: bytes, audio_format: str = "wav") -> httpx.Response:
    content = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(sound).decode(), "format": audio_format}},
               {"type": "text", "text": "What do you hear?"}]
    body = {"model": "gemma-audio", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 2, "logprobs": True, "top_logprobs": 2}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)


def test_audio_in_through_an_audio_projector(server):
    low = _hear(server, wav(440))  # loads the model
    card = httpx.get(f"{server.base_url}/v1/models/gemma-audio").json()
    assert card["capabilities"]["audio"] is True and card["capabilities"]["vision"] is False
    assert low.status_code == 200, low.text
    again, high = _hear(server, wav(440)).json(), _hear(server, wav(880)).json()  # (one slot: again first)
    low = low.json()
    assert low["usage"]["prompt_tokens"] > 700  # Whisper-style: a 30 s window, 750 positions
    assert _tokens(low)[0]["logprob"] != _tokens(high)[0]["logprob"]  # another sound, other logits
    assert _cached(again) >= 750  # the same sound in the same place: its KV reused
    refused = _ask(server, RED, model="gemma-audio")
    assert refused.status_code == 400 and "not image" in refused.json()["error"]["message"]
    garbage = _hear(server, b"RIFF" + b"\0" * 64)
    assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "messages[0].content[0]"
