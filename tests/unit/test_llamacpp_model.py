"""The llama.cpp model wrapper against the real embedded GGUF."""

from __future__ import annotations

import pytest

from backends.embedded_model import ensure_embedded_model
from backends.llamacpp.model import LlamaModel
from settings import PROJECT_ROOT

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gemma() -> LlamaModel:
    models_dir = PROJECT_ROOT / "models"
    ensure_embedded_model(models_dir, MODEL_FILE)
    model = LlamaModel(models_dir / MODEL_FILE)
    yield model
    model.free()


def test_special_tokens_among_finds_only_control_tokens(gemma):
    # <start_of_turn> is one control token in gemma's vocabulary (invisible in normal output); <tool_call> is
    # plain text split into several tokens, and plain words are never special.
    (turn,) = gemma.special_tokens_among(("<start_of_turn>", "<tool_call>", "hello"))
    assert gemma.piece(turn) == b"" and gemma.token_text(turn) == b"<start_of_turn>"


def test_flash_attention_auto_is_off_for_wide_heads_on_the_cpu_and_on_for_embeddings(gemma):
    from backends.llamacpp.model import flash_attention

    assert gemma.offloads_to_gpu is False  # (the CPU build: n_gpu_layers 0)
    assert gemma.attention_head_size == 256  # (gemma 3's key_length)
    assert flash_attention("auto", gemma) is False
    assert flash_attention("auto", gemma, embedding=True) is True
    assert (flash_attention("on", gemma), flash_attention("off", gemma, embedding=True)) == (True, False)
