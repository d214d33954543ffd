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
