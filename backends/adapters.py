"""Adapter models: a catalog entry that names a base model and LoRA adapters (`base:` + `lora:` in models.yaml) is
served by a view of the base's loaded engine, not by an engine of its own.

The view shares everything with the base (weights, context, scheduler, template, tokenizer) and differs only
in the `AdapterSet` it stamps on every request: the base engine's scheduler applies those adapters to that
request's sequences alone, so base and adapter requests run side by side on one loaded model. Loading an
adapter entry loads its adapter files into the base engine (the base itself is loaded first if needed, and is
never reloaded); unloading it frees them and leaves the base serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator

from backends.base import (
    AdapterSet,
    ChatTemplateInfo,
    Engine,
    GenerationChunk,
    GenerationRequest,
    WarmedPrompt,
)


def adapter_key(adapters: tuple) -> str:
    """Names adapter files (path, size, modification time; every file of a PEFT folder) with their scales: a
    replaced file or another scale is another key, so it never reuses KV computed with the old one."""
    parts = []
    for adapter in adapters:
        files = sorted(adapter.path.rglob("*")) if adapter.path.is_dir() else [adapter.path]
        stats = [(f.resolve(), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
        parts.append(f"{stats}|{adapter.scale!r}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class AdapterView(Engine):
    """An adapter entry's engine: its base engine, applying `adapters` to every request."""

    def __init__(self, base: Engine, base_id: str, adapters: AdapterSet) -> None:
        self.base = base
        self.base_id = base_id  # the catalog id of the loaded base model (unloading it unloads this first)
        self.adapters = adapters
        self.engine_kind = base.engine_kind
        self.capabilities = base.capabilities

    @classmethod
    def attach(cls, base: Engine, base_id: str, model_id: str, lora: tuple) -> AdapterView:
        """Load the adapter files into `base` (blocking: called on a worker thread)."""
        return cls(base, base_id, base.attach_adapters(model_id, lora))

    @property
    def context_length(self) -> int:
        return self.base.context_length

    @property
    def chat_template(self) -> ChatTemplateInfo:
        return self.base.chat_template

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(text)

    def tokenize(self, text: str) -> list[int]:
        return self.base.tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        return self.base.detokenize(tokens)

    def infill_prompt(self, prefix: str, suffix: str) -> list[int] | None:
        return self.base.infill_prompt(prefix, suffix)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return self.base.generate(dataclasses.replace(request, adapters=self.adapters))

    async def warm_prompt(self, prompt: str, conversation: str, adapters: AdapterSet | None = None) -> WarmedPrompt:
        return await self.base.warm_prompt(prompt, conversation, self.adapters)

    def cache_summary(self, adapters: AdapterSet | None = None) -> dict | None:
        return self.base.cache_summary(self.adapters)

    def failure(self) -> str | None:
        return self.base.failure()

    def worker_pid(self) -> int | None:
        return self.base.worker_pid()

    # active_sequences / queued_requests stay 0: the base's own figures count its adapter entries' sequences.

    async def aclose(self) -> None:
        await asyncio.to_thread(self.base.detach_adapters, self.adapters)
