"""M-RoPE vision models (the Qwen2-VL family: Qwen2.5-VL, Qwen3-VL, MiMo-VL...) against the real server: a tiny
random Qwen2.5-VL and its projector, built by tests/tiny_qwen_vl.py and converted by llama.cpp's own converter.

An image there fills a grid of M-RoPE positions: it has more tokens than it advances the sequence's position (9
tokens, 3 positions for a small image), so the text after it sits at a position behind its token index. The
reference is llama.cpp's own evaluation of the prompt the server renders (`/apply-template`), in this process,
through mtmd's helper (which lays out every position itself): the server's first-token logprobs must match it
whether the prompt was evaluated cold or after a cached prefix (in a slot, or from disk after a restart) was cut
just after the image. Random weights: mechanics, not descriptions."""

from __future__ import annotations

import ctypes
import io
import math
import shutil

import httpx
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_vision import BLUE, RED, data_url, png
from tests.server_process import running_server
from tests.tiny_qwen_vl import qwen25_vl

MODEL = "tiny-qwen-vl.gguf"
CLOSE = 0.005  # other chunkings round apart by <= 3e-4; text placed by token index instead (5 off): 0.04


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mrope-models")
    text, projector = qwen25_vl()
    shutil.copy(text, folder / MODEL)
    shutil.copy(projector, folder / "mmproj-tiny-qwen-vl.gguf")  # found beside the model by its name
    return folder


def start(models, log_dir, cache_dir, *flags: str):
    return running_server("--models-dir", str(models), "--model-name", MODEL, "--no-install-embedded-models",
                          "--parallel", "2", "--n-ctx", "4096", "--cache-min-tokens", "16",
                          "--cache-dir", str(cache_dir), *flags, log_dir=log_dir)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mrope-cache")


@pytest.fixture(scope="module")
def server(models, cache_dir, tmp_path_factory):
    with start(models, tmp_path_factory.mktemp("mrope-server"), cache_dir) as process:
        yield process


class LlamaCppReference:
    """The prompt's next-token logprobs as llama.cpp's mtmd helper computes them (positions laid out by mtmd)."""

    def __init__(self, models) -> None:
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(models / MODEL).encode(),
                                                          llama_cpp.llama_model_default_params())
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings, params.warmup = False, 2, False, False
        self.projector = mtmd.mtmd_init_from_file(str(models / "mmproj-tiny-qwen-vl.gguf").encode(), self.model,
                                                  params)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)

    def top_logprobs(self, prompt: str, image: bytes, count: int = 3) -> dict[str, float]:
        pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
        data = (ctypes.c_uint8 * pixels.size).from_buffer_copy(pixels.tobytes())
        bitmap = mtmd.mtmd_bitmap_init(pixels.shape[1], pixels.shape[0], data)
        chunks = mtmd.mtmd_input_chunks_init()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads, params.n_threads_batch = 2048, 512, 512, 2, 2
        context = llama_cpp.llama_init_from_model(self.model, params)
        try:
            text = prompt.encode()
            part = mtmd.mtmd_input_text(text=text, text_len=len(text), add_special=False, parse_special=True)
            array = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            assert mtmd.mtmd_tokenize(self.projector, chunks, ctypes.byref(part), array, 1) == 0
            end = llama_cpp.llama_pos(0)
            assert mtmd.mtmd_helper_eval_chunks(self.projector, context, chunks, 0, 0, 512, True,
                                                ctypes.byref(end)) == 0
            n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(context, -1), shape=(n_vocab,)).astype(float)
        finally:
            llama_cpp.llama_free(context)
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
        logprobs = logits - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
        return {self._piece(token): float(logprobs[token]) for token in np.argsort(-logprobs)[:count]}

    def _piece(self, token: int) -> str:
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self.vocab, int(token), buffer, 64, 0, True)
        return buffer.raw[:size].decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def reference(models):
    return LlamaCppReference(models)


def turns(image: bytes, follow_ups: list[tuple[str, str]]) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                             {"type": "text", "text": "What is in this picture?"}]}]
    for answer, question in follow_ups:
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": question}]
    return messages


def ask(server, messages: list[dict], max_tokens: int = 6) -> dict:
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": max_tokens, "logprobs": True,
            "top_logprobs": 3}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def first_logprobs(answer: dict) -> dict[str, float]:
    return {entry["token"]: entry["logprob"] for entry in answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}


def assert_reads_as_llama_cpp(server, messages: list[dict], answer: dict, reference, image: bytes) -> None:
    body = {"model": MODEL, "messages": messages}
    prompt = httpx.post(f"{server.base_url}/apply-template", json=body, timeout=60).json()["prompt"]
    ours, theirs = first_logprobs(answer), reference.top_logprobs(prompt, image)
    assert ours.keys() == theirs.keys(), (ours, theirs)
    assert all(abs(ours[token] - theirs[token]) < CLOSE for token in ours), (ours, theirs)


def cached(answer: dict) -> int:
    return answer["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_the_projector_loads_and_an_image_changes_the_answer(server):
    card = httpx.get(f"{server.base_url}/v1/models/{MODEL}", timeout=60).json()
    assert card["capabilities"]["vision"] is True
    plain = ask(server, [{"role": "user", "content": "What is in this picture?"}])
    red, blue = ask(server, turns(RED, [])), ask(server, turns(BLUE, []))
    assert red["usage"]["prompt_tokens"] >= plain["usage"]["prompt_tokens"] + 8  # its tokens, not its positions
    readings = [tuple(sorted(first_logprobs(answer).items())) for answer in (plain, red, blue)]
    assert len(set(readings)) == 3


def test_text_after_an_image_reads_as_llama_cpp_cold_and_after_a_cut(server, reference):
    wide = png((40, 160, 90), size=(112, 56))  # another grid shape: 8 tokens, 4 positions
    first = ask(server, turns(wide, []), max_tokens=1)
    assert_reads_as_llama_cpp(server, turns(wide, []), first, reference, wide)
    follow_up = turns(wide, [("A green field.", "What colour is it?")])
    # The slot holds the first turn (image included); the follow-up continues it after the image
    warm = ask(server, follow_up)
    assert cached(warm) >= first["usage"]["prompt_tokens"] - 4
    assert_reads_as_llama_cpp(server, follow_up, warm, reference, wide)
    # Another question about the same image: the prefix is cut back to just after the image (its positions)
    other = turns(wide, [("A green field.", "Is it a field?")])
    cut = ask(server, other)
    assert cached(cut) >= first["usage"]["prompt_tokens"] - 4
    assert_reads_as_llama_cpp(server, other, cut, reference, wide)


def test_a_restarted_server_reads_the_image_prefix_from_disk(models, cache_dir, reference, tmp_path):
    image = png((200, 120, 30))
    with start(models, tmp_path, cache_dir) as first:
        asked = ask(first, turns(image, []), max_tokens=1)
    follow_up = turns(image, [("Orange.", "Why orange?")])
    with start(models, tmp_path, cache_dir) as second:
        restored = ask(second, follow_up)
        assert httpx.get(f"{second.base_url}/cache", timeout=30).json()["disk_hits"] == 1
        assert cached(restored) >= asked["usage"]["prompt_tokens"] - 4
        assert_reads_as_llama_cpp(second, follow_up, restored, reference, image)
