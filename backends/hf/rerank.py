"""Cross-encoder rerankers on the transformers engine (`AutoModelForSequenceClassification`, e.g. BGE / MiniLM
rerankers): query and document are read together as a pair and the classifier's logit says how relevant the
document is. One logit: its sigmoid is the relevance score (sentence-transformers' CrossEncoder default); several
labels: the softmax probability of the last ("relevant") one. Pairs are scored in batches on a worker thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backends.base import Ranking
from backends.catalog import ModelEntry
from backends.embedding_base import RERANKER, EncoderEngine
from backends.hf.encoders import EncoderTokenizing, architectures, load_encoder
from errors import InvalidRequest
from settings import Settings

BATCH = 16


def is_cross_encoder(folder: Path) -> bool:
    return any(name.endswith("ForSequenceClassification") for name in architectures(folder))


class TransformersRerankEngine(EncoderTokenizing, EncoderEngine):
    engine_kind = "transformers"
    capabilities = RERANKER["capabilities"]
    kind = RERANKER["kind"]
    endpoint = RERANKER["endpoint"]

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        from transformers import AutoModelForSequenceClassification

        loaded = load_encoder(entry, settings, AutoModelForSequenceClassification)
        super().__init__(entry.id, loaded.context_length)
        self.tokenizer, self.model, self.device = loaded.tokenizer, loaded.model, loaded.device

    async def rerank(self, query: str, documents: list[str]) -> Ranking:
        return await asyncio.to_thread(self._rerank_blocking, query, documents)

    def _rerank_blocking(self, query: str, documents: list[str]) -> Ranking:
        import torch

        raw: list[float] = []
        scores: list[float] = []
        tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(documents), BATCH):
                batch = documents[start:start + BATCH]
                encoded = self.tokenizer([query] * len(batch), batch, padding=True, truncation=False,
                                         return_tensors="pt")
                lengths = encoded["attention_mask"].sum(dim=1)
                if int(lengths.max()) > self._context_length:
                    raise InvalidRequest(f"A query and document together have {int(lengths.max())} tokens; this "
                                         f"model reads at most {self._context_length}.", param="documents")
                tokens += int(lengths.sum())
                logits = self.model(**{k: v.to(self.device) for k, v in encoded.items()}).logits.float()
                if logits.shape[1] == 1:
                    raw.extend(logits[:, 0].cpu().tolist())
                    scores.extend(torch.sigmoid(logits[:, 0]).cpu().tolist())
                else:
                    raw.extend(logits[:, -1].cpu().tolist())
                    scores.extend(torch.softmax(logits, dim=1)[:, -1].cpu().tolist())
        return Ranking(scores=scores, prompt_tokens=tokens, raw_scores=raw)
