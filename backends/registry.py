"""Resolves a request's `model` field to a loaded engine, loading it on demand; keeps several models resident.

Names are looked up in the catalog (ids and aliases), never joined into paths. A model that is not loaded is
loaded in the background of the request that wants it; concurrent requests for it wait for that one load.
Which models stay loaded, and which go to make room for a load, is residency.py's. A failed load is recorded
(status `failed` with the error) and retried by the next request that asks for the model. So is an engine that
died under its model (its worker process: backends/worker/): the next request loads a fresh one, later and later
if it keeps dying.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

from opentelemetry import trace

from backends.adapters import AdapterView
from backends.base import Engine
from backends.catalog import Catalog, GenerationDefaults, ModelEntry, default_hf_cache
from backends.embedded_model import ensure_embedded_models

# (RemoteDirectory through factory.py: the one core module that reaches into the engine packages)
from backends.factory import EngineBuilder, RemoteDirectory, engine_settings, remote_directory
from backends.keep_alive import LoadedModel, parse_duration
from backends.load_progress import LoadProgress, tracking
from backends.memory import estimate_memory_bytes
from backends.residency import Residency
from chat.templates import ChatPromptRenderer
from errors import ModelLoadFailed, ModelLoading, ModelNotFound, NotSupported, ServerError
from settings import Settings

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer("llm-server")

EngineFactory = Callable[[ModelEntry, Settings], Engine]
# Whether a caller may use a model (id, aliases): the HTTP layer passes its key's rule explicitly.
ModelAccess = Callable[[str, tuple[str, ...]], bool]


def everyone(model_id: str, aliases: tuple[str, ...] = ()) -> bool:
    return True


ModelStatus = Literal["available", "loading", "loaded", "failed"]
RegistryState = Literal["empty", "loading", "ready", "failed", "missing"]
KEEP = object()  # lease(): leave the model's keep-alive as it is
CRASH_WINDOW_SECONDS = 300.0  # crashes this recent count toward a model's restart backoff
MAX_RESTART_DELAY_SECONDS = 60.0


class ModelRegistry:
    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The server's registry: engines built by `backends/factory.py`, upstreams from the models file and flags."""
        remote = remote_directory(settings)
        return cls(settings, EngineBuilder(remote), remote)

    def __init__(
        self, settings: Settings, engine_factory: EngineFactory, remote: RemoteDirectory | None = None
    ) -> None:
        self.settings = settings
        self.remote = remote
        self.default_model = settings.model_name
        self._engine_factory = engine_factory
        self._catalog: Catalog | None = None
        self.residency = Residency(lambda: self.settings)  # the loaded models, and what goes to make room
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._progress: dict[str, LoadProgress] = {}  # how far each load in progress has come
        self._errors: dict[str, str] = {}
        self.crashes: dict[str, int] = {}  # model id -> how often its engine died under it (worker processes)
        self._crash_times: dict[str, list[float]] = {}
        self._runtime_defaults: dict[str, GenerationDefaults] = {}

    # ---------------------------------------------------------------- catalog

    def catalog(self, *, refresh: bool = False) -> Catalog:
        if self._catalog is None or refresh:
            settings = self.settings
            hf_cache = (settings.hf_cache_dir or default_hf_cache()) if settings.scan_hf_cache else None
            models_file = settings.models_file or settings.models_dir / "models.yaml"
            remote = self.remote.entries() if self.remote else []
            self._catalog = Catalog.build(settings.models_dir, models_file, hf_cache, remote)
        return self._catalog

    def resolve(self, name: str | None, may_use: ModelAccess = everyone) -> ModelEntry:
        """The catalog entry for a requested name (id, `.gguf` stem or alias); empty means the default."""
        wanted = name or self.default_model
        entry = self.catalog().find(wanted)
        if entry is None or self._missing_from_disk(entry):  # the catalog may be stale: look again
            entry = self.catalog(refresh=True).find(wanted)
        if entry is None or not may_use(entry.id, entry.aliases):  # a key limited to other models sees no more
            raise ModelNotFound(wanted)
        if self._missing_from_disk(entry):
            raise ModelNotFound(wanted)
        return entry

    def _missing_from_disk(self, entry: ModelEntry) -> bool:
        """A file of it is gone (and it is not loaded: a loaded model keeps serving from memory)."""
        return self.residency.resident(entry.id) is None and not all(path.exists() for path in entry.files)

    # ---------------------------------------------------------------- state

    def loaded_model(self, model_id: str) -> LoadedModel | None:
        model = self.residency.resident(model_id)
        return model if model is not None and not model.retired else None

    @property
    def loaded_models(self) -> list[LoadedModel]:
        return [m for m in self.residency.models if not m.retired]

    @property
    def loading_ids(self) -> list[str]:
        return list(self._loading)

    def load_progress(self, model_id: str) -> LoadProgress | None:
        """How far the load of `model_id` has come, while it is loading."""
        if model_id in self._loading:
            return self._progress.setdefault(model_id, LoadProgress())
        return None

    def status(self, model_id: str) -> tuple[ModelStatus, str | None]:
        if model_id in self._loading:
            return "loading", None
        if model := self.loaded_model(model_id):
            failure = model.engine.failure()
            return ("loaded", None) if failure is None else ("failed", failure)
        if model_id in self._errors:
            return "failed", self._errors[model_id]
        return "available", None

    @property
    def state(self) -> RegistryState:
        """Overall readiness for /health: a model is loaded, one is loading, the default failed or is missing."""
        if self.loaded_models:
            return "ready"
        if self._loading:
            return "loading"
        try:
            default_id = self.resolve(None).id
        except ModelNotFound:
            return "missing"
        return "failed" if default_id in self._errors else "empty"

    @property
    def last_error(self) -> str | None:
        try:
            return self._errors.get(self.resolve(None).id)
        except ModelNotFound:
            return self.missing_default_message()

    def missing_default_message(self) -> str:
        """What was looked for where, what is there instead, and how to add a model (one log line)."""
        settings = self.settings
        available = ", ".join(entry.id for entry in self.catalog()) or "none"
        models_file = settings.models_file or settings.models_dir / "models.yaml"
        hf_cache = f", the Hugging Face cache {settings.hf_cache_dir or default_hf_cache()}" if settings.scan_hf_cache else ""
        return (f"Default model '{self.default_model}' not found: looked for a file or folder of that name (or "
                f"stem) in {settings.models_dir}{hf_cache} and an id or alias in {models_file}. Available: {available}. "
                "Put a .gguf file or a Hugging Face model folder into the models directory, or pass --model-name "
                "with an available model.")

    def worker_pids(self) -> list[int]:
        """The engine worker processes of the resident models."""
        return sorted({pid for m in self.residency.models if (pid := m.engine.worker_pid()) is not None})

    def memory_budget(self) -> int:
        return self.residency.memory_budget()

    def memory_in_use(self) -> int:
        return self.residency.memory_in_use()

    # ---------------------------------------------------------------- generation defaults

    def generation_defaults(self, model_id: str) -> GenerationDefaults:
        """The catalog entry's defaults with the ones set at run time (PUT) on top."""
        entry = self.catalog().entries.get(model_id)
        base = entry.defaults.model_dump(exclude_none=True) if entry else {}
        runtime = self._runtime_defaults.get(model_id)
        return GenerationDefaults(**{**base, **(runtime.model_dump(exclude_none=True) if runtime else {})})

    def set_generation_defaults(self, name: str, defaults: GenerationDefaults) -> ModelEntry:
        """Replace a model's run-time defaults (fields left out fall back to the catalog's); no reload."""
        entry = self.resolve(name)
        self._runtime_defaults[entry.id] = defaults
        return entry

    # ---------------------------------------------------------------- loading

    async def ensure_loaded(self, name: str | None, may_use: ModelAccess = everyone) -> LoadedModel:
        """Return the loaded model for `name`, loading it (once, however many callers wait) if needed."""
        entry = self.resolve(name, may_use)
        while True:
            model = self.residency.resident(entry.id)
            if model is not None and model.retired:
                await model.gone.wait()  # being unloaded: wait, then load it again
                continue
            if model is not None and model.engine.failure() is not None:
                await self._retire_crashed(model)
                continue
            if model is None:
                self._check_restart_backoff(entry.id)
            if model is not None:
                model.last_used = time.monotonic()
                return model
            return await asyncio.shield(self._load_task(entry))

    async def _retire_crashed(self, model: LoadedModel) -> None:
        """An engine that died (its worker process): recorded, counted and unloaded, so a fresh one is loaded."""
        failure = model.engine.failure()
        if model.base_id is None and not model.retired:  # (an adapter model dies with its base: counted there)
            self._errors[model.model_id] = failure
            self.crashes[model.model_id] = self.crashes.get(model.model_id, 0) + 1
            now = time.monotonic()
            recent = [t for t in self._crash_times.get(model.model_id, []) if now - t < CRASH_WINDOW_SECONDS]
            self._crash_times[model.model_id] = recent + [now]
        await self.residency.unload(model)

    def _check_restart_backoff(self, model_id: str) -> None:
        """A model that keeps crashing is restarted at most once per 2, 4, 8... (up to 60) seconds: 503 until then."""
        recent = self._crash_times.get(model_id, [])
        if len(recent) < 2:
            return
        wait = recent[-1] + min(2.0 ** (len(recent) - 1), MAX_RESTART_DELAY_SECONDS) - time.monotonic()
        if wait > 0:
            error = ModelLoading(f"Model '{model_id}' crashed {len(recent)} times in the last "
                                 f"{CRASH_WINDOW_SECONDS:.0f} s; it restarts in {wait:.0f} s. Last: {self._errors.get(model_id)}")
            error.retry_after_seconds = max(1, round(wait))
            raise error

    def _load_task(self, entry: ModelEntry) -> asyncio.Task[LoadedModel]:
        """The one load of `entry` in progress, started now if there is none."""
        task = self._loading.get(entry.id)
        if task is None:
            task = asyncio.create_task(self._load(entry))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures live in the status
            self._loading[entry.id] = task
        return task

    def start_loading(self, name: str | None) -> ModelEntry:
        """Begin loading in the background (the status shows `loading` at once); failures are recorded."""
        entry = self.resolve(name)
        model = self.residency.resident(entry.id)
        if model is None:
            self._load_task(entry)
        elif model.retired:
            asyncio.create_task(self.ensure_loaded(entry.id)).add_done_callback(
                lambda t: t.cancelled() or t.exception()
            )
        return entry

    async def set_default(self, name: str, *, wait: bool = True) -> ModelEntry:
        entry = self.resolve(name)
        if wait:
            await self.ensure_loaded(entry.id)
        else:
            self.start_loading(entry.id)
        self.default_model = entry.id
        return entry

    async def _load(self, entry: ModelEntry) -> LoadedModel:
        # (traced as a child of the request that started the load, when tracing is on: api/tracing.py)
        with _tracer.start_as_current_span("model load", attributes={"gen_ai.request.model": entry.id,
                                                                      "llm_server.engine": entry.engine}):
            return await self._load_traced(entry)

    async def _load_traced(self, entry: ModelEntry) -> LoadedModel:
        started = time.perf_counter()
        settings = engine_settings(entry, self.settings)
        try:
            if entry.engine != "remote" and entry.base is None:  # remote and adapter models: no room to make
                estimate = await asyncio.to_thread(estimate_memory_bytes, entry, settings.n_ctx)
                await self.residency.reserve(entry, estimate)
                logger.info("Loading model %s (about %.0f MiB)", entry.id, estimate / 2**20)
            with tracking(self._progress.setdefault(entry.id, LoadProgress())):  # reported from the thread
                engine = await self._build_engine(entry, settings)
            try:
                renderer = ChatPromptRenderer(engine.chat_template)
            except Exception:
                await engine.aclose()
                raise
        except NotSupported:
            raise
        except ServerError as exc:
            self._errors[entry.id] = exc.message
            raise
        except Exception as exc:
            self._errors[entry.id] = f"{type(exc).__name__}: {exc}"
            logger.exception("Failed to load %s", entry.id)
            raise ModelLoadFailed(f"Model '{entry.id}' failed to load: {exc}") from exc
        finally:
            self._loading.pop(entry.id, None)
            self._progress.pop(entry.id, None)
            memory = self.residency.release(entry.id)  # a failed load gives its reservation back too
        model = LoadedModel(entry, engine, renderer, memory or (entry.size_bytes or 0), time.perf_counter() - started,
                            keep_alive=parse_duration(entry.ttl if entry.ttl is not None else self.settings.model_ttl),
                            base_id=engine.base_id if isinstance(engine, AdapterView) else None)
        self.residency.admit(model)
        self._errors.pop(entry.id, None)
        logger.info("Model %s ready in %.2f s (context %d tokens/sequence)", entry.id, model.load_seconds,
                    engine.context_length)
        return model

    async def _build_engine(self, entry: ModelEntry, settings: Settings) -> Engine:
        """A new engine for `entry` (on a worker thread); an adapter entry's is a view of its loaded base."""
        if entry.base is None:
            return await asyncio.to_thread(self._engine_factory, entry, settings)
        base = await self.ensure_loaded(entry.base)
        if base.base_id is not None:
            raise ValueError(f"its base '{entry.base}' is an adapter entry itself; name the model under it")
        return await asyncio.to_thread(AdapterView.attach, base.engine, base.model_id, entry.id, entry.lora)

    # ---------------------------------------------------------------- unloading

    async def unload(self, name: str) -> bool:
        """Unload a model once its in-flight requests finish; False if it was not loaded."""
        entry = self.resolve(name)
        model = self.residency.resident(entry.id)
        if model is None:
            return False
        await self.residency.unload(model)
        return True

    # ---------------------------------------------------------------- use

    @asynccontextmanager
    async def lease(self, name: str | None, may_use: ModelAccess = everyone,
                    keep_alive: float | None | object = KEEP) -> AsyncIterator[LoadedModel]:
        """Hold a model for the duration of one request so it is not unloaded underneath it. `keep_alive`
        (seconds, None = forever) becomes the model's idle time once the request ends (see keep_alive.py)."""
        model = await self.ensure_loaded(name, may_use)
        while model.retired:  # chosen for eviction between its load and now: get it back
            model = await self.ensure_loaded(model.model_id)
        # An adapter model's requests run on its base: they hold the base too (no eviction, no idle clock).
        held = [m for m in (model, self.residency.resident(model.base_id or "")) if m is not None]
        for each in held:  # no await between the retired check and this, so eviction sees the lease
            each.leases += 1
            each.idle.clear()
            each.last_used = time.monotonic()
        try:
            yield model
        finally:
            model.keep_alive = model.keep_alive if keep_alive is KEEP else keep_alive
            for each in held:
                each.leases -= 1
                each.last_used = time.monotonic()
                if each.leases == 0:
                    each.idle.set()

    def start(self) -> None:
        """Start background work (keep-alive expiry, upstream discovery and health probes); needs the event loop."""
        self.residency.start_reaping()
        if self.remote is not None:
            self.remote.start()

    async def load_default_model(self) -> None:
        """Start-up: place the embedded models if configured, then load the default model. A failure is logged,
        not raised: the server still starts, and /health and / report it."""
        if self.settings.install_embedded_models:
            await asyncio.to_thread(ensure_embedded_models, self.settings.models_dir)
        try:
            await self.ensure_loaded(None)
        except ModelNotFound:
            logger.error(self.missing_default_message())
        except Exception as exc:
            logger.error("Default model '%s' failed to load: %s", self.default_model, getattr(exc, "message", exc))

    async def aclose(self) -> None:
        self.residency.stop_reaping()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await self.residency.unload_all()
        if self.remote is not None:
            await self.remote.aclose()
