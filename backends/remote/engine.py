"""The remote engine: a catalog model served by an upstream OpenAI-compatible server.

It generates nothing itself: requests for it are relayed as they came (see `api/proxy.py`), with the `model`
field rewritten to the upstream's name. This object only says where to: the upstream pool and model name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from backends.base import ChatTemplateInfo, Engine, EngineCapabilities, GenerationChunk, GenerationRequest
from backends.catalog import ModelEntry
from backends.remote.pool import UpstreamPool
from errors import ModelNotFound, NotSupported


class RemoteEngine(Engine):
    engine_kind = "remote"
    relays_requests = True  # the HTTP layer forwards requests whole instead of calling generate()
    # Everything is passed through; the upstream decides what it supports.
    capabilities = EngineCapabilities(tools=True, parallel_tool_calls=True, json_schema=True, grammar=True)

    def __init__(self, entry: ModelEntry, pool: UpstreamPool | None) -> None:
        upstream = entry.upstream or {}
        if pool is None:
            raise ModelNotFound(entry.id)
        self.entry = entry
        self.pool = pool
        self.upstream_model = upstream.get("model") or entry.id.split("/", 1)[-1]

    @property
    def context_length(self) -> int:
        return 0  # not known here

    @property
    def chat_template(self) -> ChatTemplateInfo:
        return ChatTemplateInfo(source="", origin=f"upstream:{self.pool.name}")

    def count_tokens(self, text: str) -> int:
        raise NotSupported("Token counting is not available for remote models.")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        raise NotSupported("Remote models are relayed, not generated here.")
        yield  # pragma: no cover - makes this an async generator like the others

    async def aclose(self) -> None:
        """The pool belongs to the remote directory and outlives this model."""
