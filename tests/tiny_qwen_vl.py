"""A tiny Qwen2.5-VL for tests: a vision-language model whose projector lays images out with M-RoPE.

No small Qwen-VL GGUF is on PyPI, so the tests build one: a random-weight `Qwen2_5_VLForConditionalGeneration`
(a 2-layer text model 64 wide with M-RoPE sections, a 3-block vision tower whose first blocks use window attention
and the last full attention, as Qwen2.5-VL alternates them), written with `transformers` (`save_pretrained`) with a
byte-level BPE tokenizer trained here that holds Qwen2.5-VL's control tokens, then converted by llama.cpp's own
`convert_hf_to_gguf.py` from the llama-cpp-python sdist: the text model (`qwen2vl` in llama.cpp) and, with
`--mmproj`, the projector (`qwen2.5vl` projector type), exactly as a user converts a hub checkpoint.

Qwen-VL's projector takes images of any size (resized to multiples of 28 pixels, at least 8 image tokens); each
2x2 group of 14-pixel patches becomes one token, and with M-RoPE an image advances the sequence by fewer positions
(max(rows, columns)) than it has tokens (rows x columns). mtmd wraps each image in `<|vision_start|>` ...
`<|vision_end|>` itself, so the chat template only has to pass the media marker through: the template is
MiMo-VL's (a Qwen2.5-VL model; llama.cpp's collection holds no Qwen2.5-VL template), which renders string content.

Random weights mean gibberish: tests assert mechanics (an image changes the logits, the same image gives the same
output, positions after an image, caching), not what the model says. Built GGUFs are kept in the test cache, keyed
by the builder's settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.llama_cpp_sdist import CACHE, chat_templates
from tests.tiny_hybrids import convert

# Qwen2.5-VL's control tokens (one token each, as in the real vocabulary), and those MiMo-VL's template writes
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_TOKENS = ("<|endoftext|>", *VISION_TOKENS, "<tool_call>", "</tool_call>", "<tool_response>",
                  "</tool_response>", "<think>", "</think>")
WIDTH, HEAD_DIM = 64, 16
MROPE_SECTION = [2, 3, 3]  # temporal, height, width rotary pairs: they sum to HEAD_DIM / 2, as in Qwen2.5-VL
PATCH, MERGE = 14, 2
# Qwen2.5-VL's preprocessor_config.json (the converter reads the mean and std; the rest as on the hub)
PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": PATCH, "temporal_patch_size": 2, "merge_size": MERGE,
    "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_resize": True, "resample": 3,
}

# The Qwen-VL text model reads its vocabulary as byte-level BPE directly: its converter tries SentencePiece first
# and falls back to BPE only on a missing tokenizer.model, not on a missing `sentencepiece` package (this venv has
# none; a hub Qwen2.5-VL has no tokenizer.model either, so the outcome is the same)
_AS_BPE = """
import conversion.qwenvl
conversion.qwenvl.Qwen2VLModel.set_vocab = conversion.base.TextModel._set_vocab_gpt2
"""


QK_SHARPENING = 8.0


def qwen25_vl(*, seed: int = 0) -> tuple[Path, Path]:
    """(text model GGUF, mmproj GGUF) of the tiny Qwen2.5-VL, side by side in one folder and named so that the
    server's `find_projector` pairs them (`mmproj-<model stem>.gguf`)."""
    settings = {"family": "qwen2.5-vl", "seed": seed, "version": 2}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = CACHE / "qwen-vl" / f"qwen25vl-{key}"
    model, projector = folder / f"qwen25vl-{key}.gguf", folder / f"mmproj-qwen25vl-{key}.gguf"
    if not (model.is_file() and projector.is_file()):
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        checkpoint = _checkpoint(staging / "hf", seed)
        convert(checkpoint, staging / model.name, setup=_AS_BPE)
        convert(checkpoint, staging / projector.name, "--mmproj", setup=_AS_BPE)
        shutil.rmtree(checkpoint)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return model, projector


def _checkpoint(folder: Path, seed: int) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from tests.tiny_hf_model import build_tokenizer

    tokenizer = build_tokenizer(folder, vocab_size=640, chat_template=chat_templates()["MiMo-VL"],
                                extra_special_tokens=QWEN_VL_TOKENS)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    text = {
        "vocab_size": len(tokenizer), "hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": 2,
        "num_attention_heads": WIDTH // HEAD_DIM, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_SECTION},
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": False,
    }
    # 3 blocks, the last with full attention and the others windowed (`fullatt_block_indexes`; Qwen2.5-VL makes
    # every 8th block full). 3 at least: the converter maps the merger's `mlp.0` and `mlp.2` like blocks 0 and 2.
    # The merger's output is the text model's width.
    vision = {
        "depth": 3, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "patch_size": PATCH,
        "spatial_merge_size": MERGE, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [2],
        "out_hidden_size": WIDTH,
    }
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():  # random attention is nearly uniform, blind to positions: sharpen it so they matter
        for name, parameter in model.named_parameters():
            if not name.startswith("model.visual") and ("self_attn.q_proj.weight" in name or "self_attn.k_proj.weight" in name):
                parameter.mul_(QK_SHARPENING)
    model.save_pretrained(folder)  # (the hub's tensor names: `visual.*`...)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return folder
