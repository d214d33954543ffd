"""Resolves a request's `model` field to a loaded engine, loading it on demand.

Model ids are GGUF file names in the models directory (the stem is accepted too). A name is only ever
matched against the directory listing, never joined into a path, so no request can reach outside it.
This issue keeps one model resident: loading another retires the current one, which finishes the
requests it is serving (leases) before its memory is freed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from backends.base import Engine
from chat.templates import ChatPromptRenderer
from errors import EngineFailure, ModelLoading, ModelNotFound

logger = logging.getLogger(__name__)

EngineFactory = Callable[[Path], Engine]
RegistryState = Literal["empty", "loading", "ready", "failed"]


@dataclass
class LoadedModel:
    model_id: str
    path: Path
    engine: Engine
    renderer: ChatPromptRenderer
    leases: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


def list_model_files(models_dir: Path) -> list[Path]:
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")


class ModelRegistry:
    def __init__(self, models_dir: Path, default_model: str, engine_factory: EngineFactory) -> None:
        self.models_dir = models_dir
        self.default_model = default_model
        self._engine_factory = engine_factory
        self._current: LoadedModel | None = None
        self._loading: tuple[str, asyncio.Task[LoadedModel]] | None = None
        self.last_error: str | None = None

    # ---------------------------------------------------------------- catalog

    def available(self) -> list[Path]:
        return list_model_files(self.models_dir)

    def resolve_id(self, name: str | None) -> str:
        """Map a requested name (file name or stem) to a model id; unknown names are 404."""
        wanted = name or self.default_model
        for path in self.available():
            if wanted in (path.name, path.stem):
                return path.name
        raise ModelNotFound(wanted)

    # ---------------------------------------------------------------- state

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def loading_id(self) -> str | None:
        return self._loading[0] if self._loading else None

    @property
    def state(self) -> RegistryState:
        if self._loading:
            return "loading"
        if self._current:
            return "ready"
        return "failed" if self.last_error else "empty"

    # ---------------------------------------------------------------- loading

    async def ensure_loaded(self, name: str | None) -> LoadedModel:
        """Return the loaded model for `name`, loading it (once, however many callers wait) if needed."""
        model_id = self.resolve_id(name)
        if self._current and self._current.model_id == model_id:
            return self._current
        if self._loading is None or self._loading[0] != model_id:
            if self._loading is not None:
                # Another model is loading: wait for it so loads never overlap, then load ours.
                await asyncio.shield(self._loading[1])
                return await self.ensure_loaded(model_id)
            task = asyncio.create_task(self._load(model_id))
            self._loading = (model_id, task)
        return await asyncio.shield(self._loading[1])

    async def set_default(self, name: str) -> LoadedModel:
        loaded = await self.ensure_loaded(name)
        self.default_model = loaded.model_id
        return loaded

    async def _load(self, model_id: str) -> LoadedModel:
        path = self.models_dir / model_id
        logger.info("Loading model %s", model_id)
        try:
            engine = await asyncio.to_thread(self._engine_factory, path)
            renderer = ChatPromptRenderer(engine.chat_template)
        except Exception as exc:
            self.last_error = f"{model_id}: {exc}"
            logger.exception("Failed to load %s", model_id)
            raise EngineFailure(f"Model '{model_id}' failed to load: {exc}") from exc
        finally:
            self._loading = None
        previous, self._current = self._current, LoadedModel(model_id, path, engine, renderer)
        self.last_error = None
        if previous is not None:
            asyncio.create_task(self._retire(previous))
        logger.info("Model %s ready (context %d tokens/sequence)", model_id, engine.context_length)
        return self._current

    async def _retire(self, model: LoadedModel) -> None:
        """Close a replaced model once the requests it is serving have finished."""
        model.retired = True
        await model.idle.wait()
        await model.engine.aclose()
        logger.info("Unloaded model %s", model.model_id)

    # ---------------------------------------------------------------- use

    @asynccontextmanager
    async def lease(self, name: str | None) -> AsyncIterator[LoadedModel]:
        """Hold a model for the duration of one request so it is not unloaded underneath it."""
        model = await self.ensure_loaded(name)
        model.leases += 1
        model.idle.clear()
        try:
            yield model
        finally:
            model.leases -= 1
            if model.leases == 0:
                model.idle.set()

    def require_ready(self) -> None:
        if self.state == "loading" and self._current is None:
            raise ModelLoading(f"Model '{self.loading_id}' is loading; retry shortly.")

    async def aclose(self) -> None:
        if self._loading:
            await asyncio.gather(self._loading[1], return_exceptions=True)
        if self._current is not None:
            current, self._current = self._current, None
            await current.engine.aclose()
