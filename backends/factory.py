"""Builds the engine for a catalog entry from a lazy kind -> class table.

Engine modules import their heavy libraries (llama.cpp, torch) at module level, so a class is imported only
when a model of its kind is first loaded: a llama.cpp-only server never imports torch. Runs in a worker thread.
"""

from __future__ import annotations

import importlib

from backends.base import Engine
from backends.catalog import ModelEntry
from backends.remote.pool import RemoteDirectory, load_upstream_configs
from settings import Settings

# kind -> (module, class)
ENGINE_CLASSES: dict[str, tuple[str, str]] = {
    "llama.cpp": ("backends.llamacpp.engine", "LlamaCppEngine"),
    "llama.cpp-embedding": ("backends.llamacpp.embeddings", "LlamaCppEmbeddingEngine"),
    "transformers": ("backends.hf.engine", "TransformersEngine"),
    "transformers-embedding": ("backends.hf.embeddings", "TransformersEmbeddingEngine"),
    "transformers-rerank": ("backends.hf.rerank", "TransformersRerankEngine"),
}


def local_engine_kind(entry: ModelEntry, settings: Settings) -> str:
    """Which local engine serves `entry`: generative or embedding, on llama.cpp or transformers."""
    if entry.engine == "transformers":
        from backends.hf.embeddings import is_embedding_model
        from backends.hf.rerank import is_cross_encoder

        folder = entry.path if entry.path is not None and entry.path.is_dir() else None
        if folder is not None and is_cross_encoder(folder):
            return "transformers-rerank"
        return "transformers-embedding" if folder is not None and is_embedding_model(folder) else "transformers"
    from backends.llamacpp.embeddings import is_gguf_embedding_model

    return "llama.cpp-embedding" if is_gguf_embedding_model(entry, settings) else "llama.cpp"


def engine_settings(entry: ModelEntry, settings: Settings) -> Settings:
    """The server's settings with the catalog entry's per-model overrides applied."""
    overrides = entry.settings.model_dump(exclude_none=True)
    is_default = settings.model_name in (entry.id, entry.id.removesuffix(".gguf"))
    for name in ("chat_template", "chat_template_tool_use"):
        if getattr(entry, name):
            overrides[name] = getattr(entry, name)
        elif not is_default:
            overrides[name] = None  # --chat-template(-tool-use) is the default model's override only
    if not is_default and "draft_model" not in overrides:
        overrides["draft_model"] = None  # so is --draft-model
    if entry.mmproj is not None:
        overrides["mmproj"] = str(entry.mmproj)
    elif not is_default:
        overrides["mmproj"] = None  # and --mmproj
    return settings.model_copy(update=overrides)


def remote_directory(settings: Settings) -> RemoteDirectory:
    """The upstream servers remote models are served from: the models file's and the --upstream flags'."""
    models_file = settings.models_file or settings.models_dir / "models.yaml"
    return RemoteDirectory(load_upstream_configs(models_file, settings.upstream))


class EngineBuilder:
    """Called by the registry (in a worker thread) with an entry and its effective settings."""

    def __init__(self, remote: RemoteDirectory) -> None:
        self.remote = remote

    def __call__(self, entry: ModelEntry, settings: Settings) -> Engine:
        if entry.engine == "remote":
            from backends.remote.engine import RemoteEngine

            return RemoteEngine(entry, self.remote.pool((entry.upstream or {}).get("name", "")))
        if settings.engine_workers:  # (the worker picks the engine: this process never imports llama.cpp or torch)
            from backends.worker.engine import WorkerEngine

            return WorkerEngine(entry, settings)
        return build_local_engine(entry, settings)


def build_local_engine(entry: ModelEntry, settings: Settings) -> Engine:
    """The llama.cpp or transformers engine of a local entry, in this process."""
    module, name = ENGINE_CLASSES[local_engine_kind(entry, settings)]
    return getattr(importlib.import_module(module), name)(entry, settings)
