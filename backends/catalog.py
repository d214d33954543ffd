"""The model catalog: every model this server can serve, and how, rebuilt from disk on demand.

Sources, later ones winning on the same id:
- GGUF files in the models directory (id = file name; the stem is accepted too) -> llama.cpp;
- Hugging Face model folders in the models directory (config.json + weights) -> transformers;
- models already in the local Hugging Face cache (`models--org--name`, id `org/name`) -> transformers;
- entries of the models file (`models/models.yaml`): id, aliases, engine, path or repo, chat template, tool
  prompt, per-model engine settings (n_ctx, parallel...), generation defaults, remote upstream settings.

Request names are only ever looked up among catalog ids and aliases, never joined into a path, so no request
reaches outside the models directory. Discovered files must also resolve inside it (a symlink pointing out is
skipped); paths in the models file are the operator's own choice and may point anywhere.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backends.gguf_header import auxiliary_gguf
from settings import OnOffAuto

logger = logging.getLogger(__name__)

EngineKind = Literal["llama.cpp", "transformers", "remote"]
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


class GenerationDefaults(BaseModel):
    """A model's default sampling; any field a request sets overrides it."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, ge=0.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    reasoning_budget: int | None = Field(None, ge=-1)  # thinking tokens before the block is closed; -1 unlimited
    chat_template_kwargs: dict[str, Any] | None = None  # template variables, e.g. {"enable_thinking": false}
    stop: list[str] | None = Field(None, max_length=16)  # stop strings added to every request's own


class EngineOverrides(BaseModel):
    """Per-model engine settings from the models file (the server's flags apply to everything left unset)."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int | None = Field(None, ge=64)
    parallel: int | None = Field(None, ge=1, le=64)
    n_batch: int | None = Field(None, ge=1)
    n_ubatch: int | None = Field(None, ge=1)
    n_threads: int | None = Field(None, ge=0)
    n_threads_batch: int | None = Field(None, ge=0)
    n_gpu_layers: int | None = None
    repack: Literal["auto", "on", "off"] | None = None
    flash_attn: OnOffAuto | None = None
    kv_unified: bool | None = None
    swa_full: bool | None = None
    prompt_cache: bool | None = None
    cache_min_tokens: int | None = Field(None, ge=1)
    ctx_checkpoints: int | None = Field(None, ge=0)
    checkpoint_every: int | None = Field(None, ge=0)
    embedding: bool | None = None
    pooling: Literal["model", "mean", "cls", "last", "rank"] | None = None
    budget_closing: bool | None = None
    loop_breaking: bool | None = None
    spec: Literal["off", "ngram", "draft"] | None = None
    draft_model: str | None = None
    spec_draft_max: int | None = Field(None, ge=1, le=64)
    spec_draft_min: int | None = Field(None, ge=1, le=64)
    spec_max_sequences: int | None = Field(None, ge=1)
    spec_pool_tokens: int | None = Field(None, ge=0)


class HFLoadOptions(BaseModel):
    """How the transformers engine loads a checkpoint."""

    model_config = ConfigDict(extra="forbid")

    device: str = "auto"  # auto (cuda when available, else cpu), cpu, cuda, cuda:N
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: Literal["4bit", "8bit"] | None = None  # bitsandbytes, CUDA only
    device_map: str | None = None  # "auto": spread a model larger than one GPU over the GPUs (and CPU)
    gguf_file: str | None = None  # load this GGUF from the folder through transformers (dequantised)


class LoraAdapter(BaseModel):
    """One LoRA adapter of an adapter entry: a llama.cpp LoRA GGUF (llama.cpp bases) or a PEFT adapter folder
    (transformers bases), and how strongly it applies (0 = not at all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    scale: float = Field(1.0, ge=-100.0, le=100.0)

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str | Path) else value  # `lora: [a.gguf]` means scale 1


class ModelEntry(BaseModel):
    """One servable model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    engine: EngineKind | None = None  # None: from the path (a .gguf file -> llama.cpp, a folder -> transformers)
    path: Path | None = None
    repo: str | None = None  # Hugging Face repo id, looked up in the local cache only
    aliases: tuple[str, ...] = ()
    chat_template: str | None = None  # a template name in templates/ or a file path
    chat_template_tool_use: str | None = None  # the same, for requests with tools (a named `tool_use` template)
    tool_prompt: Path | None = None  # tool-use instructions for templates without tool support
    settings: EngineOverrides = EngineOverrides()
    defaults: GenerationDefaults = GenerationDefaults()
    hf: HFLoadOptions = HFLoadOptions()
    upstream: dict[str, Any] | None = None  # remote engine settings (base_url...)
    source: Literal["file", "folder", "hf-cache", "models-file", "upstream"] = "models-file"
    rerank: Literal["cosine"] | None = None  # an embedding model also serves /v1/rerank, by cosine similarity
    ttl: str | float | None = None  # keep-alive once idle ("10m", seconds; negative = forever); see keep_alive.py
    # An adapter entry: the catalog model it runs on (id or alias) and the LoRA adapters it applies there. It
    # shares that model's loaded weights and context; see backends/adapters.py.
    base: str | None = None
    lora: tuple[LoraAdapter, ...] = ()
    mmproj: Path | None = None  # a GGUF model's multimodal projector (images, audio); see backends/llamacpp/media.py

    @model_validator(mode="after")
    def _engine_from_path(self) -> ModelEntry:
        if self.base is not None or self.lora:
            return self._adapter_entry()
        if self.engine is None:
            if self.path is not None and self.path.suffix.lower() == ".gguf":
                object.__setattr__(self, "engine", "llama.cpp")
            elif self.path is not None or self.repo is not None:
                object.__setattr__(self, "engine", "transformers")
            elif self.upstream is not None:
                object.__setattr__(self, "engine", "remote")
            else:
                raise ValueError("give a path, a repo or an upstream (or an engine)")
        return self

    def _adapter_entry(self) -> ModelEntry:
        if self.base is None or not self.lora:
            raise ValueError("an adapter entry names both its `base` model and its `lora` adapters")
        own = [name for name in ("path", "repo", "upstream", "chat_template", "chat_template_tool_use", "tool_prompt", "settings", "hf", "mmproj")
               if name in self.model_fields_set]
        if own:
            raise ValueError(f"an adapter entry runs on its base model's engine; {', '.join(own)} belong to the base")
        if self.engine is None:  # a LoRA GGUF runs on llama.cpp, a PEFT folder on transformers
            kind = "llama.cpp" if self.lora[0].path.suffix.lower() == ".gguf" else "transformers"
            object.__setattr__(self, "engine", kind)
        return self

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this entry serves from (its model, or its adapters)."""
        return tuple(adapter.path for adapter in self.lora) or ((self.path,) if self.path is not None else ())

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may use for this model."""
        stem = (self.id[: -len(".gguf")],) if self.id.lower().endswith(".gguf") else ()
        return (self.id, *stem, *self.aliases)

    @property
    def size_bytes(self) -> int | None:
        if self.lora:
            return sum(_size(adapter.path) or 0 for adapter in self.lora)
        return _size(self.path)


def _size(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for pattern in _WEIGHT_PATTERNS for f in path.glob(pattern))


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _discover_models_dir(models_dir: Path) -> list[ModelEntry]:
    entries = []
    if not models_dir.is_dir():
        return entries
    for path in sorted(models_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if not _inside(path, models_dir):
            logger.warning("Skipping %s: it points outside the models directory", path.name)
            continue
        if path.is_file() and path.suffix.lower() == ".gguf":
            if auxiliary_gguf(path):  # an adapter or a projector: part of a model, not one
                continue
            entries.append(ModelEntry(id=path.name, path=path, source="file"))
        elif path.is_dir() and (path / "config.json").is_file() and _has_weights(path):
            entries.append(ModelEntry(id=path.name, path=path, engine="transformers", source="folder"))
    return entries


def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) for pattern in _WEIGHT_PATTERNS)


def default_hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _discover_hf_cache(hub: Path) -> list[ModelEntry]:
    """Models already downloaded into the Hugging Face cache (`models--org--name/snapshots/<rev>/`)."""
    entries = []
    if not hub.is_dir():
        return entries
    for repo_dir in sorted(hub.glob("models--*")):
        snapshots = sorted((repo_dir / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        if not snapshots or not _has_weights(snapshots[-1].parent):
            continue
        repo = repo_dir.name.removeprefix("models--").replace("--", "/")
        entries.append(ModelEntry(id=repo, repo=repo, path=snapshots[-1].parent, engine="transformers", source="hf-cache"))
    return entries


def _read_models_file(models_file: Path, models_dir: Path) -> list[ModelEntry]:
    if not models_file.is_file():
        return []
    try:
        document = yaml.safe_load(models_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        logger.error("Ignoring %s: %s", models_file, exc)
        return []
    raw_entries = (document.get("models") or []) if isinstance(document, dict) else []  # `models:` alone is None
    entries = []
    for index, raw in enumerate(raw_entries):
        try:
            entry = ModelEntry.model_validate({**raw, "source": "models-file"})
        except (ValidationError, TypeError) as exc:
            logger.error("Ignoring entry %d of %s: %s", index, models_file, exc)
            continue
        # Relative paths in the models file are relative to the models directory (pathlib's `/` keeps an absolute
        # right-hand side as it is).
        updates: dict[str, Any] = {name: models_dir / value for name in ("path", "tool_prompt", "mmproj")
                                   if (value := getattr(entry, name)) is not None}
        updates["lora"] = tuple(adapter.model_copy(update={"path": models_dir / adapter.path}) for adapter in entry.lora)
        entries.append(entry.model_copy(update=updates))
    return entries


def is_pattern(name: str) -> bool:
    """An alias with glob characters maps every matching name (tools that hard-code `gpt-4o` and the like)."""
    return any(char in name for char in "*?[")


class Catalog:
    """A snapshot of the catalog; `build` makes a fresh one (cheap: directory listings and one small file)."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries: dict[str, ModelEntry] = {}
        for entry in entries:  # later sources win on the same id
            self.entries[entry.id] = entry
        self._by_name: dict[str, str] = {}
        self._patterns: list[tuple[str, str]] = []  # (glob alias, id), in catalog order
        for entry in self.entries.values():  # ids first, so an alias never shadows another model's id
            self._by_name.setdefault(entry.id, entry.id)
        for entry in self.entries.values():
            for name in entry.names:
                if is_pattern(name):
                    self._patterns.append((name, entry.id))
                else:
                    self._by_name.setdefault(name, entry.id)

    @classmethod
    def build(
        cls, models_dir: Path, models_file: Path | None, hf_cache: Path | None, remote: list[ModelEntry] = ()
    ) -> Catalog:
        entries = list(remote)  # models the upstreams serve, `upstream/model`
        entries += _discover_hf_cache(hf_cache) if hf_cache else []
        entries += _discover_models_dir(models_dir)
        if models_file is not None:
            entries += _read_models_file(models_file, models_dir)
        return cls(entries)

    def find(self, name: str) -> ModelEntry | None:
        """Exact ids and aliases first; then glob aliases (`gpt-*`), the first in catalog order that matches."""
        model_id = self._by_name.get(name)
        if model_id is None:
            model_id = next((mid for pattern, mid in self._patterns if fnmatch.fnmatchcase(name, pattern)), None)
        return self.entries[model_id] if model_id else None

    def __iter__(self):
        return iter(self.entries.values())
