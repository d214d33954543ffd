"""The remote engine: a catalog model served by an upstream OpenAI-compatible server.

It generates nothing itself: a request for it is relayed as the client sent it (`relay`), with the `model` field
rewritten to the upstream's name and back. The I/O lives in `relay.py`, the URLs and their counters in `pool.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from backends.base import (
    ChatTemplateInfo,
    Engine,
    EngineCapabilities,
    GenerationChunk,
    GenerationRequest,
    RelayedStream,
    RelayedWhole,
)
from backends.catalog import ModelEntry
from backends.remote.pool import UpstreamPool
from backends.remote.relay import open_call, read_whole, start_stream
from errors import ModelNotFound, NotSupported


class RemoteEngine(Engine):
    engine_kind = "remote"
    relays_requests = True  # requests are forwarded whole (`relay`) instead of calling generate()
    # Everything is passed through; the upstream decides what it supports.
    capabilities = EngineCapabilities(tools=True, parallel_tool_calls=True, json_schema=True, grammar=True)

    def __init__(self, entry: ModelEntry, pool: UpstreamPool | None) -> None:
        upstream = entry.upstream or {}
        if pool is None:
            raise ModelNotFound(entry.id)
        self.entry = entry
        self.pool = pool
        self.upstream_model = upstream.get("model") or entry.id.split("/", 1)[-1]

    async def relay(
        self, path: str, body: dict, client_gone: Callable[[], Awaitable], headers: dict[str, str] | None = None
    ) -> RelayedWhole | RelayedStream | None:
        """Forward `body` to the upstream's `path` (e.g. `chat/completions`), with the client's `headers` meant
        for it (affinity hints). A stream comes back once its first bytes arrived; a whole answer once read, or
        None if `client_gone` finished first."""
        call = await open_call(self.pool, path, {**body, "model": self.upstream_model}, headers or {})
        if body.get("stream"):
            return await start_stream(call, self.upstream_model, self.entry.id)
        return await read_whole(call, self.entry.id, client_gone)

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
