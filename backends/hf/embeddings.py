"""Embedding models on the transformers engine (BERT-style encoders such as all-MiniLM-L6-v2).

A Hugging Face folder whose model is not a causal LM (or that carries sentence-transformers' `modules.json`) is
served for `/v1/embeddings` only. Pooling follows the folder's sentence-transformers config (mean by default,
CLS when it says so) and vectors are L2-normalised when its modules include `Normalize`. Inputs are embedded in
batches on a worker thread, one batch at a time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from backends.catalog import ModelEntry
from backends.embedding_base import EmbeddingEngine, Embeddings
from backends.engine_support import check_token_ids
from backends.hf.encoders import EncoderTokenizing, architectures, load_encoder
from errors import InvalidRequest
from settings import Settings

BATCH = 32


def is_embedding_model(folder: Path) -> bool:
    if (folder / "modules.json").is_file():
        return True
    names = architectures(folder)
    return bool(names) and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in names)


class TransformersEmbeddingEngine(EncoderTokenizing, EmbeddingEngine):
    engine_kind = "transformers"

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from transformers import AutoModel

        loaded = load_encoder(entry, settings, AutoModel)
        super().__init__(entry.id, loaded.context_length)
        self.tokenizer, self.model, self.device = loaded.tokenizer, loaded.model, loaded.device
        self.pooling, self.normalize = _pooling_config(entry.path)
        self.dimensions = self.model.config.hidden_size

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        return await asyncio.to_thread(self._embed_blocking, inputs)

    def _embed_blocking(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        import torch

        if not isinstance(inputs[0], str):
            for tokens in inputs:
                check_token_ids(tokens, len(self.tokenizer), param="input")
        vectors: list[list[float]] = []
        tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(inputs), BATCH):
                batch = inputs[start : start + BATCH]
                if isinstance(batch[0], str):
                    encoded = self.tokenizer(batch, padding=True, truncation=False, return_tensors="pt")
                else:
                    encoded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt")
                lengths = encoded["attention_mask"].sum(dim=1)
                if int(lengths.max()) > self._context_length:
                    raise InvalidRequest(
                        f"An input has {int(lengths.max())} tokens; this model embeds at most {self._context_length}.",
                        param="input",
                    )
                tokens += int(lengths.sum())
                encoded = {k: v.to(self.device) for k, v in encoded.items()}
                hidden = self.model(**encoded).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = encoded["attention_mask"].unsqueeze(-1).float()
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors.extend(pooled.cpu().tolist())
        return Embeddings(vectors, tokens)


def _pooling_config(folder: Path) -> tuple[str, bool]:
    pooling, normalize = "mean", False
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return pooling, normalize
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Normalize"):
            normalize = True
        if kind.endswith("Pooling"):
            try:
                config = json.loads((folder / module.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                continue
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
    return pooling, normalize
