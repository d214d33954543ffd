"""What the transformers encoder engines (embedding models, cross-encoder rerankers) share: loading a folder's
tokenizer and model offline onto the chosen device, the input limit, and tokenizing with that tokenizer."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.catalog import ModelEntry
from backends.hf.loading import pick_device, pick_dtype, release_torch_memory
from errors import ModelNotFound
from settings import Settings


def architectures(folder: Path) -> list[str]:
    """The model classes a checkpoint folder's config.json names (none if it has no readable config)."""
    try:
        return json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return []


@dataclass
class LoadedEncoder:
    tokenizer: Any
    model: Any
    device: Any
    context_length: int  # the most tokens one input may have


def load_encoder(entry: ModelEntry, settings: Settings, auto_class: Any) -> LoadedEncoder:
    """`auto_class`: transformers' AutoModel (embeddings) or AutoModelForSequenceClassification (rerankers)."""
    from transformers import AutoTokenizer

    if entry.path is None or not (entry.path / "config.json").is_file():
        raise ModelNotFound(entry.id)
    device = pick_device(entry.hf)
    common = {"local_files_only": True, "trust_remote_code": settings.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(entry.path, **common)
    model = auto_class.from_pretrained(entry.path, dtype=pick_dtype(entry.hf, device), **common).to(device).eval()
    limit = getattr(tokenizer, "model_max_length", 512) or 512
    return LoadedEncoder(tokenizer, model, device,
                         min(limit, getattr(model.config, "max_position_embeddings", limit)))


class EncoderTokenizing:
    """tokenize / detokenize through the engine's Hugging Face tokenizer, and unloading (under the engine's lock,
    so no batch is running)."""

    tokenizer: Any
    model: Any
    _lock: threading.Lock

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._free)

    def _free(self) -> None:
        with self._lock:
            self.model = self.tokenizer = None
            release_torch_memory()
