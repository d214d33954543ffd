"""Tiny hybrid (recurrent + attention) models for tests: no small hybrid GGUF is on PyPI, so the tests build them.

Each is a random-weight checkpoint of the real architecture, written with `transformers` (`save_pretrained`, with
a byte-level BPE tokenizer trained here holding the control tokens of the family's real chat template, read from
llama.cpp's collection in the llama-cpp-python sdist), then converted by llama.cpp's own `convert_hf_to_gguf.py`
from that sdist, exactly as a user converts a hub checkpoint. The converter recognises a tokenizer by the hash of
how it splits a test string; ours is new to it, so the conversion names its pre-tokenizer `gpt-2` (plain byte-level
BPE, which it is) instead of guessing.

Random weights mean gibberish: tests assert mechanics (the same greedy tokens alone and batched, prompt reuse,
restarts), not prose. Built GGUFs are kept in the test cache, keyed by the builder's settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.llama_cpp_sdist import CACHE, chat_templates
from tests.tiny_projectors import converter

# The control tokens each family's real template writes (one token each, as in the real vocabulary)
QWEN_TOKENS = ("<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
               "</tool_response>")
GRANITE_TOKENS = ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>", "<tool_call>",
                  "</tool_call>", "<tool_response>", "</tool_response>")
LFM2_TOKENS = ("<|startoftext|>", "<|tool_list_start|>", "<|tool_list_end|>", "<|tool_call_start|>",
               "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>", "<think>", "</think>")

_CONVERT = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
{setup}
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def convert(checkpoint: Path, out: Path, *extra: str, setup: str = "") -> Path:
    """llama.cpp's converter on `checkpoint` (`extra`: its flags; `setup`: Python run in it first, to adapt a
    family's converter to a test checkpoint)."""
    script = converter()
    subprocess.run([sys.executable, "-c", _CONVERT.format(setup=setup), str(script.parent), str(checkpoint),
                    "--outfile", str(out), "--outtype", "f32", *extra], check=True, capture_output=True)
    return out


def _cached(name: str, settings: dict, build) -> Path:
    """The GGUF `build(checkpoint_folder, out_path)` makes, built once per settings and kept in the test cache."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out = CACHE / "hybrids" / f"{name}-{key}.gguf"
    if not out.is_file():
        work = out.with_suffix(".work")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        partial = out.with_suffix(".partial")
        build(work, partial)
        partial.rename(out)
        shutil.rmtree(work, ignore_errors=True)
    return out


def qwen35(*, layers: tuple[str, ...] = ("linear_attention",) * 3 + ("full_attention",), seed: int = 0,
           width: int = 64, head_dim: int = 256) -> Path:
    """Qwen3.5 (Gated DeltaNet layers and gated full attention, `qwen35` in llama.cpp), with Qwen3.5's real
    template. Head sizes keep Qwen3.5's rope layout (head 256, a quarter of it rotated in M-RoPE sections).
    `width`: the hidden size (64 for tests; the bench builds a wider one whose prompt evaluation costs more).
    `head_dim`: a head too small for Qwen3.5's rope sections makes a model file llama.cpp aborts on
    (`GGML_ASSERT(sect_dims <= ne0)`), as a user's odd conversion would: the crash tests use one."""
    settings = {"family": "qwen35", "layers": layers, "seed": seed, "version": 2}
    if width != 64:
        settings["width"] = width
    if head_dim != 256:
        settings["head_dim"] = head_dim

    def build(folder: Path, out: Path) -> None:
        import torch
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

        from tests.tiny_hf_model import build_tokenizer

        tokenizer = build_tokenizer(folder, vocab_size=600, chat_template=chat_templates()["Qwen3.5-4B"],
                                    extra_special_tokens=QWEN_TOKENS)
        config = Qwen3_5TextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=len(layers),
            layer_types=list(layers), num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
            linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
            linear_conv_kernel_dim=4, max_position_embeddings=32768, tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        Qwen3_5ForCausalLM(config).save_pretrained(folder)
        convert(folder, out, "--no-mtp")

    return _cached("qwen35", settings, build)


def granite4(*, layers: tuple[str, ...] = ("linear_attention",) * 2 + ("full_attention",), seed: int = 0) -> Path:
    """Granite 4.0-H (Mamba2 layers and attention without RoPE, dense MLP as in granite-4.0-h-micro;
    `granitehybrid` in llama.cpp), with Granite 4.0's real template. `layers`: transformers' names for the layer
    types; the checkpoint is written with the hub's ("mamba", "attention"), the only ones the converter reads."""
    settings = {"family": "granite4", "layers": layers, "seed": seed, "version": 1}

    def build(folder: Path, out: Path) -> None:
        import torch
        from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

        from tests.tiny_hf_model import build_tokenizer

        tokenizer = build_tokenizer(folder, vocab_size=600, chat_template=chat_templates()["ibm-granite-granite-4.0"],
                                    extra_special_tokens=GRANITE_TOKENS)
        config = GraniteMoeHybridConfig(
            vocab_size=-(-len(tokenizer) // 8) * 8,  # as the converter pads a Mamba2 vocabulary (to a multiple of 8)
            hidden_size=64, intermediate_size=128, shared_intermediate_size=128,
            num_local_experts=0, num_experts_per_tok=0, num_hidden_layers=len(layers), layer_types=list(layers),
            num_attention_heads=4, num_key_value_heads=2, position_embedding_type=None,
            mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
            mamba_chunk_size=64, max_position_embeddings=4096, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        GraniteMoeHybridForCausalLM(config).save_pretrained(folder)
        # transformers 5 writes `linear_attention`/`full_attention`; the converter (like the hub) wants the old names
        saved = json.loads((folder / "config.json").read_text())
        hub_names = {"linear_attention": "mamba", "full_attention": "attention"}
        saved["layer_types"] = [hub_names.get(kind, kind) for kind in saved["layer_types"]]
        (folder / "config.json").write_text(json.dumps(saved, indent=2))
        convert(folder, out)

    return _cached("granite4", settings, build)


def lfm2(*, layers: tuple[str, ...] = ("conv",) * 2 + ("full_attention",), seed: int = 0) -> Path:
    """LFM2 (gated short-convolution layers and GQA attention, `lfm2` in llama.cpp), with LFM2.5's real template."""
    settings = {"family": "lfm2", "layers": layers, "seed": seed, "version": 1}

    def build(folder: Path, out: Path) -> None:
        import torch
        from transformers import Lfm2Config, Lfm2ForCausalLM

        from tests.tiny_hf_model import build_tokenizer

        tokenizer = build_tokenizer(folder, vocab_size=600, chat_template=chat_templates()["LFM2.5-Instruct"],
                                    extra_special_tokens=LFM2_TOKENS)
        config = Lfm2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, block_auto_adjust_ff_dim=False,
            num_hidden_layers=len(layers), layer_types=list(layers), num_attention_heads=4, num_key_value_heads=2,
            conv_L_cache=3, max_position_embeddings=4096, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        Lfm2ForCausalLM(config).save_pretrained(folder)
        convert(folder, out)

    return _cached("lfm2", settings, build)
