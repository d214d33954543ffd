"""Writes a random LoRA adapter GGUF for a GGUF base model, as llama.cpp's `convert_lora_to_gguf.py` lays one out
(no LoRA file is on PyPI): `general.type: adapter`, `adapter.type: lora`, `adapter.lora.alpha`, and for each
adapted weight `<name>.lora_a` (ggml shape [n_in, rank]) and `<name>.lora_b` ([rank, n_out]).

Random weights mean nothing, but they change the model's logits by a controlled amount: that is what the tests
need (scale 0 = the base exactly; another adapter or scale = other logits)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from backends.hf.gguf_reading import plain_array_reader


def _architecture(reader: gguf.GGUFReader) -> str:
    field = reader.fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def build_lora_gguf(base: Path, out: Path, *, rank: int = 8, alpha: float = 8.0, strength: float = 0.05,
                    targets: tuple[str, ...] = ("attn_q", "attn_v", "ffn_up"), seed: int = 0) -> Path:
    """An adapter for every `blk.N.<target>.weight` of `base`. `strength` scales the random entries: the larger,
    the more the adapted model departs from the base."""
    reader = plain_array_reader()(base)  # (gguf-py's own reader takes 23 s on gemma-3's vocabulary; this one 7 s)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, _architecture(reader))
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in targets or parts[3] != "weight":
            continue
        n_in, n_out = (int(dim) for dim in tensor.shape[:2])
        name = tensor.name.removesuffix(".weight")
        # numpy shapes are ggml's reversed: lora_a (rank, n_in), lora_b (n_out, rank)
        writer.add_tensor(f"{name}.weight.lora_a", (rng.standard_normal((rank, n_in)) * strength).astype(np.float32))
        writer.add_tensor(f"{name}.weight.lora_b", (rng.standard_normal((n_out, rank)) * strength).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
