"""GGUF embedding models on llama.cpp (BERT-style embedders, or any GGUF configured with `embedding: true`).

The model runs in an embedding context: llama.cpp pools each sequence's token vectors (the GGUF's pooling type,
or `--pooling` / models.yaml `pooling`) and we L2-normalise them, as OpenAI's and llama-server's vectors are.
Several inputs share one decode as separate sequences, up to the batch's token and sequence limits. Encoders
attend both ways, so an input must fit one micro-batch: the context is sized to the model's trained length.
"""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import llama_cpp

from backends.base import Ranking
from backends.catalog import ModelEntry
from backends.embedding_base import RERANKER, EmbeddingEngine, Embeddings, l2_normalized
from backends.engine_support import check_token_ids
from backends.gguf_header import read_gguf_metadata, read_gguf_tensor_names
from backends.llamacpp.model import (
    ContextConfig,
    LlamaContext,
    LlamaModel,
    add_to_batch,
    default_threads,
    flash_attention,
)
from errors import EngineFailure, InvalidRequest, ModelNotFound
from settings import Settings

SEQUENCES_PER_DECODE = 16
_POOLING = {
    "model": llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    "rank": llama_cpp.LLAMA_POOLING_TYPE_RANK,  # a sequence classifier's head on the pooled vector: a reranker
}


# Encoder architectures llama.cpp runs with bidirectional attention when their GGUF does not say.
_ENCODER_ARCHITECTURES = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert",
                          "neo-bert", "t5encoder"}


def is_gguf_embedding_model(entry: ModelEntry, settings: Settings) -> bool:
    """Configured as one, or the file carries a pooling type (converters write it for embedding models only), or
    it is a sequence classifier (a cross-encoder reranker: llama.cpp's converter writes its labels, no pooling)."""
    if settings.embedding or settings.pooling == "rank":
        return True
    if entry.path is None or not entry.path.is_file():
        return False
    metadata = read_gguf_metadata(entry.path)
    pooled = f"{metadata.get('general.architecture', '')}.pooling_type" in metadata
    return pooled or _classifies(entry.path, metadata)


def _classifies(path: Path, metadata: dict) -> bool:
    """An encoder with a sequence classification head (`cls.output`: BERT / XLM-R ...ForSequenceClassification as
    llama.cpp's converter writes them, without a pooling type). Decoders are not read: their vocabularies are big."""
    if not _attends_both_ways(metadata):
        return False
    return bool({"cls.output.weight", "cls.weight"} & set(read_gguf_tensor_names(path)))


def _pooling(setting: str, path: Path, metadata: dict) -> int:
    """The pooling a context is made with: the setting's, or for `model` the file's own; a classifier whose file
    names no pooling ranks (its head reads the pooled vector)."""
    architecture = metadata.get("general.architecture", "")
    if setting == "model" and f"{architecture}.pooling_type" not in metadata and _classifies(path, metadata):
        return llama_cpp.LLAMA_POOLING_TYPE_RANK
    return _POOLING[setting]


def _attends_both_ways(metadata: dict) -> bool:
    architecture = metadata.get("general.architecture", "")
    causal = metadata.get(f"{architecture}.attention.causal")
    return causal is False or (causal is None and architecture in _ENCODER_ARCHITECTURES)


class LlamaCppEmbeddingEngine(EmbeddingEngine):
    engine_kind = "llama.cpp"

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        if entry.path is None or not entry.path.is_file():
            raise ModelNotFound(entry.id)
        self.model = LlamaModel(entry.path, n_gpu_layers=settings.n_gpu_layers, repack=settings.repack)
        threads = settings.n_threads or default_threads()
        n_ctx = min(settings.n_ctx, self.model.n_ctx_train)
        # A bidirectional encoder must see a whole input in one micro-batch; a causal model need not, and a big
        # micro-batch would cost (vocabulary x micro-batch) floats of output buffer (2 GiB for gemma at 2048).
        metadata = read_gguf_metadata(entry.path)
        bidirectional = _attends_both_ways(metadata)
        n_ubatch = n_ctx if bidirectional else min(n_ctx, settings.n_ubatch)
        config = ContextConfig(
            n_ctx=n_ctx, n_seq_max=SEQUENCES_PER_DECODE, n_batch=n_ctx, n_ubatch=n_ubatch, n_threads=threads,
            n_threads_batch=settings.n_threads_batch or threads,
            flash_attn=flash_attention(settings.flash_attn, self.model, embedding=True), kv_unified=True,
            embeddings=True, pooling_type=_pooling(settings.pooling, entry.path, metadata),
        )
        try:
            self.context = LlamaContext(self.model, config)
            if self.context.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
                raise ValueError(f"'{entry.id}' does not pool its token vectors into one embedding; "
                                 "set pooling (mean, cls or last) for it in models.yaml or with --pooling.")
        except Exception:
            self.free_blocking()
            raise
        self.dimensions = llama_cpp.llama_model_n_embd(self.model.ptr)
        # Rank pooling (a reranker: BERT / XLM-R sequence classifiers as llama.cpp's converter writes them): the
        # pooled output of a query + document pair is its relevance logit; such a model reranks, never embeds.
        self.ranks = self.context.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_RANK
        if self.ranks:
            vars(self).update(RERANKER)
        # One decode holds at most n_batch tokens, and for an encoder at most n_ubatch: llama.cpp aborts the
        # process (GGML_ASSERT) on an encoder batch larger than n_ubatch, so inputs and groups stay within it.
        ubatch_limit = llama_cpp.llama_n_ubatch(self.context.ptr) if bidirectional else self.context.n_ctx
        super().__init__(entry.id, min(self.context.n_ctx, llama_cpp.llama_n_batch(self.context.ptr), ubatch_limit))
        self._batch = llama_cpp.llama_batch_init(self._context_length, 0, SEQUENCES_PER_DECODE)

    def weight_placement(self) -> dict:
        return self.model.placement.describe()

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize_plain(text)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.model.piece(token) for token in tokens).decode("utf-8", errors="replace")

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        if self.ranks:
            raise self.refusal()
        return await asyncio.to_thread(self._embed_blocking, inputs)

    async def rerank(self, query: str, documents: list[str]) -> Ranking:
        if not self.ranks:
            return await super().rerank(query, documents)
        return await asyncio.to_thread(self._rerank_blocking, query, documents)

    def _rerank_blocking(self, query: str, documents: list[str]) -> Ranking:
        pairs = [self._pair(query, document) for document in documents]
        for index, tokens in enumerate(pairs):
            if len(tokens) > self._context_length:
                raise InvalidRequest(f"The query and document {index} together have {len(tokens)} tokens; this "
                                     f"model reads at most {self._context_length}.", param="documents")
        raw: list[float] = []
        with self._lock:
            for group in self._decode_groups(pairs):
                raw.extend(vector[0] for vector in self._decode(group, dimensions=1, normalize=False))
        scores = [1 / (1 + math.exp(-value)) for value in raw]
        return Ranking(scores=scores, prompt_tokens=sum(len(tokens) for tokens in pairs), raw_scores=raw)

    def _pair(self, query: str, document: str) -> list[int]:
        """`[CLS] query [SEP] document [SEP]`, the cross-encoder's input (BOS / SEP as the vocabulary names them);
        tokenize_plain frames one text as BOS ... SEP already."""
        return self.model.tokenize_plain(query) + self.model.tokenize_plain(document)[1:]

    def _embed_blocking(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        token_lists = [self.tokenize(item) if isinstance(item, str) else list(item) for item in inputs]
        for tokens in token_lists:
            check_token_ids(tokens, self.model.n_vocab, param="input")
        for index, tokens in enumerate(token_lists):
            if len(tokens) > self._context_length:
                raise InvalidRequest(f"Input {index} has {len(tokens)} tokens; this model embeds at most "
                                     f"{self._context_length}.", param="input")
        vectors: list[list[float]] = []
        with self._lock:
            for group in self._decode_groups(token_lists):
                vectors.extend(self._decode(group))
        return Embeddings(vectors, sum(len(tokens) for tokens in token_lists))

    def _decode_groups(self, token_lists: list[list[int]]):
        """Consecutive inputs that fit one decode together (order is kept)."""
        group: list[list[int]] = []
        used = 0
        for tokens in token_lists:
            if group and (used + len(tokens) > self._context_length or len(group) == SEQUENCES_PER_DECODE):
                yield group
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
        if group:
            yield group

    def _decode(self, group: list[list[int]], dimensions: int | None = None,
                normalize: bool = True) -> list[list[float]]:
        batch = self._batch
        batch.n_tokens = 0
        for seq_id, tokens in enumerate(group):
            for position, token in enumerate(tokens):
                add_to_batch(batch, token, position, seq_id, logits=True)  # embedding contexts: every token out
        self.context.clear_memory()
        if self.context.decode(batch) != 0:
            raise EngineFailure("llama.cpp failed to embed this batch.")
        vectors = [self.context.pooled_embedding(seq_id, dimensions or self.dimensions) for seq_id in range(len(group))]
        return [l2_normalized(vector) for vector in vectors] if normalize else vectors

    async def aclose(self) -> None:
        await asyncio.to_thread(self.free_blocking)

    def free_blocking(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            if getattr(self, "_batch", None) is not None:
                llama_cpp.llama_batch_free(self._batch)
                self._batch = None
            if getattr(self, "context", None) is not None:
                self.context.free()
            self.model.free()
