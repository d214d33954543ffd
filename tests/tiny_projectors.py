"""Multimodal projectors for the embedded gemma-3-270m, built by the tests (no small vision or audio GGUF is on PyPI).

Images: a tiny random Gemma 3 vision-language checkpoint (SigLIP tower of 2 layers on 64x64 images, 16 image tokens, its
text width that of gemma-3-270m) is written with `transformers`, then converted by llama.cpp's own
`convert_hf_to_gguf.py --mmproj` into an mmproj GGUF. The converter comes from llama-cpp-python's sdist on PyPI
(the version the server runs), fetched once with pip and kept in ~/.cache/llm-server-tests. The language model is
the real gemma-3-270m GGUF: Gemma 3's projector feeds any Gemma 3 text model of its width.
Audio: a tiny random Qwen2-Audio checkpoint (a 3-layer Whisper encoder, its projector 640 wide), converted the same
way; mtmd feeds its embeddings to gemma-3-270m as well (only the width has to match).

Random weights mean the model sees noise, so tests assert mechanics (an image changes the logits, the same image
gives the same output, caching), not what the model says about a picture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import llama_cpp

from tests.llama_cpp_sdist import CACHE, VENDORED, sdist_archive

IMAGE_SIZE, PATCH, IMAGE_TOKENS = 64, 8, 16
TEXT_WIDTH = 640  # gemma-3-270m's embedding width


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py (with its gguf-py and conversion package) from the sdist of the installed
    llama-cpp-python."""
    version = llama_cpp.__version__
    root = CACHE / f"llama-cpp-python-{version}-converter"
    script = root / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    wanted = ("convert_hf_to_gguf.py", "gguf-py/", "conversion/")
    staging = root.with_name(root.name + ".partial")
    with tarfile.open(sdist_archive()) as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(VENDORED)
                   and m.name[len(VENDORED):].startswith(wanted) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(VENDORED):]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4+: refuse odd paths
        sdist.extractall(staging, members=members, **safe)
    staging.rename(root)
    return script


def _checkpoint(folder: Path, seed: int, image_size: int, patch: int, image_tokens: int) -> Path:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    torch.manual_seed(seed)
    text = Gemma3TextConfig(vocab_size=512, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=1, num_key_value_heads=1, head_dim=64)
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                image_size=image_size, patch_size=patch)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                        mm_tokens_per_image=image_tokens))
    with torch.no_grad():  # transformers starts the projection at zero: every image would look the same
        for name, parameter in model.named_parameters():
            if "mm_input_projection" in name:
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    # transformers 5 writes the tower as `vision_tower.*`; the converter reads the hub's `vision_tower.vision_model.*`
    weights = load_file(folder / "model.safetensors")
    save_file({("vision_tower.vision_model." + k.removeprefix("vision_tower.") if k.startswith("vision_tower.")
                and not k.startswith("vision_tower.vision_model.") else k): v for k, v in weights.items()},
              folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Gemma3ImageProcessor", "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "image_seq_length": image_tokens, "size": {"height": image_size, "width": image_size},
        "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_resize": True, "resample": 2}))
    return folder


def build_gemma3_mmproj(out: Path, *, seed: int = 0, image_size: int = IMAGE_SIZE, patch: int = PATCH,
                        image_tokens: int = IMAGE_TOKENS) -> Path:
    """An mmproj GGUF for gemma-3-270m at `out` (its checkpoint is written next to it, in `<out stem>-hf/`).
    Images are resized to `image_size` squared, cut in `patch`-pixel patches, pooled into `image_tokens` tokens."""
    folder = _checkpoint(out.with_name(out.stem + "-hf"), seed, image_size, patch, image_tokens)
    _convert(folder, out)
    return out


def build_qwen2_audio_mmproj(out: Path, *, seed: int = 0) -> Path:
    """An audio mmproj GGUF for gemma-3-270m's width at `out` (Whisper-style: 30 s windows, 750 tokens each)."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    folder = out.with_name(out.stem + "-hf")
    torch.manual_seed(seed)
    # 3 layers at least: the converter names the two convolutions like blocks 1 and 2
    config = Qwen2AudioConfig(
        audio_config={"d_model": 64, "encoder_layers": 3, "encoder_attention_heads": 4, "encoder_ffn_dim": 128,
                      "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": 512, "hidden_size": TEXT_WIDTH, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})
    model = Qwen2AudioForConditionalGeneration(config)
    with torch.no_grad():  # a projection that makes different sounds look different
        for name, parameter in model.named_parameters():
            if "multi_modal_projector" in name:
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128, "sampling_rate": 16000,
        "hop_length": 160, "chunk_length": 30, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000}))
    _convert(folder, out)
    return out


def convert(folder: Path, out: Path, *flags: str) -> Path:
    """A Hugging Face folder converted to GGUF by llama.cpp's own converter (f32 weights)."""
    script = converter()
    env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
    subprocess.run([sys.executable, str(script), str(folder), *flags, "--outfile", str(out), "--outtype", "f32"],
                   check=True, env=env, capture_output=True)
    return out


def _convert(folder: Path, out: Path) -> None:
    convert(folder, out, "--mmproj")
