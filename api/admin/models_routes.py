"""Model catalog, selection and management, server status and health."""

from __future__ import annotations

import datetime
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.admin.load_stream import load_events
from api.deps import AdminDep, RegistryDep, TenantDep, wants_html
from api.error_responses import error_response
from api.protocol import ModelActionRequest, ModelCard, ModelList, SetModelRequest
from api.routes_web import chat_page
from api.sse import event_stream
from backends.catalog import GenerationDefaults, ModelEntry
from backends.memory import cuda_allocated_bytes, process_rss_bytes, server_rss_bytes
from backends.registry import ModelRegistry
from errors import DefaultModelUnavailable, ModelLoading, ModelNotLoaded
from tenants.audit import audit

router = APIRouter(tags=["models"])


def _model_card(registry: ModelRegistry, entry: ModelEntry) -> ModelCard:
    status, error = registry.status(entry.id)
    created = int(entry.path.stat().st_mtime) if entry.path is not None and entry.path.exists() else 0
    extra: dict = {
        "engine": entry.engine,
        "status": status,
        "loaded": status == "loaded",
        "error": error,
        "aliases": list(entry.aliases),
        "source": entry.source,
        "size_bytes": entry.size_bytes,
        "default": registry.default_model in entry.names,  # what a request naming no model gets
    }
    if entry.engine != "remote":
        extra["crashes"] = registry.crashes.get(entry.id, 0)  # its engine died under it (then restarted)
    if entry.base is not None:  # an adapter entry: the model it runs on and what it applies there
        extra["base"] = entry.base
        extra["lora"] = [{"file": adapter.path.name, "scale": adapter.scale} for adapter in entry.lora]
    if (progress := registry.load_progress(entry.id)) is not None:
        extra["loading"] = progress.as_dict()  # {progress 0..1, stage, elapsed_seconds}
    if entry.engine == "remote" and registry.remote is not None:
        pool = registry.remote.pool((entry.upstream or {}).get("name", ""))
        extra["upstream"] = pool.describe() if pool else None  # URLs and health; never the key
    model = registry.loaded_model(entry.id)
    if model is not None and not model.engine.relays_requests:
        engine, renderer = model.engine, model.renderer
        extra["context_length"] = engine.context_length
        extra["memory_bytes"] = model.memory_bytes
        extra["load_seconds"] = round(model.load_seconds, 3)
        extra["keep_alive_seconds"] = model.keep_alive  # None: stays until evicted or unloaded
        expires = model.expires_in()  # None while in use or kept forever
        extra["expires_at"] = None if expires is None else _rfc3339(time.time() + expires)
        extra["weights"] = engine.weight_placement()
        if (pid := engine.worker_pid()) is not None:  # its worker process (--engine-workers)
            extra["worker"] = {"pid": pid, "rss_bytes": process_rss_bytes(pid)}
        extra["chat_template"] = engine.chat_template.origin
        extra["capabilities"] = {
            **vars(engine.capabilities),
            "native_tool_template": renderer.supports_tools,  # else tools are taught by templates/tool_prompt.jinja
            "tool_call_format": renderer.tool_call_format.name,
            "reasoning": reasoning_capabilities(renderer),
        }
    elif entry.settings.n_ctx is not None:
        extra["context_length"] = entry.settings.n_ctx // (entry.settings.parallel or registry.settings.parallel)
    return ModelCard(id=entry.id, created=created, **extra)


def _rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def reasoning_capabilities(renderer) -> dict | None:
    """Whether the model thinks, with which markers, and which controls it honours (None: it does not reason)."""
    markers = renderer.reasoning_markers
    if markers is None:
        return None
    controls = ["reasoning_budget", "reasoning_format", "chat_template_kwargs"]
    controls += [name for name in ("enable_thinking", "reasoning_effort") if renderer.reads_variable(name)]
    if not renderer.reads_variable("reasoning_effort"):
        controls.append("reasoning_effort:none")  # honoured by closing the block at once
    return {"markers": [markers.open, markers.close], "controls": controls}


@router.get("/v1/models", response_model=ModelList)
@router.get("/models", response_model=ModelList, include_in_schema=False)
async def list_models(registry: RegistryDep, tenant: TenantDep) -> ModelList:
    entries = [entry for entry in registry.catalog(refresh=True) if tenant.may_use(entry.id, entry.aliases)]
    return ModelList(data=[_model_card(registry, entry) for entry in entries])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
@router.get("/models/{model_id:path}", response_model=ModelCard, include_in_schema=False)
async def get_model(model_id: str, registry: RegistryDep, tenant: TenantDep) -> ModelCard:
    return _model_card(registry, registry.resolve(model_id, tenant.may_use))


@router.post("/setModel")
async def set_model(body: SetModelRequest, registry: RegistryDep, admin: AdminDep) -> JSONResponse:
    """Make a model the default for requests that name none, loading it (waits unless `"wait": false`)."""
    entry = await registry.set_default(body.modelName, wait=body.wait)
    audit(admin, "set_default_model", model=entry.id)
    return _action_response(registry, entry, body.wait)


# ---------------------------------------------------------------- management


@router.post("/admin/models/load", tags=["admin"])
async def load_model(body: ModelActionRequest, registry: RegistryDep, admin: AdminDep) -> Response:
    """Load a model (it stays resident until evicted or unloaded); `"wait": false` answers 202 at once,
    `"stream": true` sends its progress as Server-Sent Events (api/admin/load_stream.py)."""
    audit(admin, "load", model=body.model)
    if body.stream:
        entry = registry.resolve(body.model)  # an unknown model is a 404, before the stream starts
        return event_stream(load_events(registry, entry, lambda: _action_body(registry, entry, True)))
    if body.wait:
        entry = (await registry.ensure_loaded(body.model)).entry
    else:
        entry = registry.start_loading(body.model)
    return _action_response(registry, entry, body.wait)


@router.post("/admin/models/unload", tags=["admin"])
async def unload_model(body: ModelActionRequest, registry: RegistryDep, admin: AdminDep) -> dict:
    """Unload a model and free its memory, after the requests it is serving finish."""
    rss_before, cuda_before = server_rss_bytes(registry.worker_pids()), cuda_allocated_bytes()
    was_loaded = await registry.unload(body.model)
    audit(admin, "unload", model=body.model, was_loaded=was_loaded)
    return {"model": registry.resolve(body.model).id, "unloaded": was_loaded, "status": "available",
            "rss_bytes_before": rss_before, "rss_bytes_after": server_rss_bytes(registry.worker_pids()),
            "cuda_allocated_bytes_before": cuda_before, "cuda_allocated_bytes_after": cuda_allocated_bytes()}


@router.get("/admin/models/{model_id:path}/defaults", tags=["admin"])
async def get_defaults(model_id: str, registry: RegistryDep, _: AdminDep) -> dict:
    entry = registry.resolve(model_id)
    return {"model": entry.id, "defaults": registry.generation_defaults(entry.id).model_dump(exclude_none=True)}


@router.put("/admin/models/{model_id:path}/defaults", tags=["admin"])
async def put_defaults(model_id: str, body: GenerationDefaults, registry: RegistryDep, admin: AdminDep) -> dict:
    """Replace the model's run-time generation defaults (no reload); request fields still override them."""
    entry = registry.set_generation_defaults(model_id, body)
    audit(admin, "set_defaults", model=entry.id, defaults=body.model_dump_json(exclude_none=True))
    return {"model": entry.id, "defaults": registry.generation_defaults(entry.id).model_dump(exclude_none=True)}


def _action_response(registry: ModelRegistry, entry: ModelEntry, waited: bool) -> JSONResponse:
    return JSONResponse(_action_body(registry, entry, waited), status_code=200 if waited else 202)


def _action_body(registry: ModelRegistry, entry: ModelEntry, waited: bool) -> dict:
    status, error = registry.status(entry.id)
    body = {"status": "ok" if waited else "accepted", "model": entry.id, "model_status": status, "error": error,
            "default_model": registry.default_model}
    model = registry.loaded_model(entry.id)
    if model is not None:
        body["context_length"] = model.engine.context_length
    return body


# ---------------------------------------------------------------- status


def _status(request: Request) -> dict:
    registry: ModelRegistry = request.app.state.registry
    loaded = registry.loaded_models
    default = registry.loaded_model(registry.default_model) or (loaded[0] if loaded else None)
    return {
        "status": registry.state if request.app.state.startup.done() else "loading",
        "model": default.model_id if default else None,
        "default_model": registry.default_model,
        "loaded_models": [
            {"model": m.model_id, "active_sequences": m.engine.active_sequences(),
             "queued_requests": m.engine.queued_requests(), "memory_bytes": m.memory_bytes, "in_flight": m.leases}
            for m in loaded
        ],
        "loading": registry.loading_ids,
        "error": registry.last_error,
        "active_sequences": sum(m.engine.active_sequences() for m in loaded),
        "queued_requests": sum(m.engine.queued_requests() for m in loaded),
        "memory": {"rss_bytes": server_rss_bytes(registry.worker_pids()), "cuda_allocated_bytes": cuda_allocated_bytes(),
                   "budget_bytes": registry.memory_budget(),
                   "estimated_in_use_bytes": registry.memory_in_use()},
        "prompt_cache": default.engine.cache_summary() if default else None,
    }


@router.get("/")
async def server_status(request: Request):
    """Status as JSON; a browser gets the chat page instead."""
    if wants_html(request.headers.get("accept", "")):
        return chat_page()
    return _status(request)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 when a model is ready to serve; 503 while starting or loading (`model_loading`, with Retry-After), or
    when the default model is missing (`model_not_found`) or failed to load (`model_load_failed`). Never blocks."""
    status = _status(request)
    if status["status"] in ("ready", "empty"):  # empty: every model was unloaded; the next request loads one
        return JSONResponse({"status": "ok", "model": status["model"]})
    if status["status"] == "loading":
        return error_response(ModelLoading("The model is loading; retry shortly."))
    code = "model_not_found" if status["status"] == "missing" else "model_load_failed"
    return error_response(DefaultModelUnavailable(f"No model is loaded: {status['error']}", code=code))


@router.get("/livez")
async def liveness() -> JSONResponse:
    """Liveness for an orchestrator: 200 while the server answers at all, during a long model load too (a liveness
    probe on /health, 503 while loading, would have the server restarted in the middle of its load)."""
    return JSONResponse({"status": "alive"})


@router.get("/readyz")
async def readiness(request: Request, registry: RegistryDep, model: str | None = None) -> JSONResponse:
    """Readiness: without `model`, /health's answer; with one, 200 only when that model is loaded and its engine
    works, else 503 (`model_loading`, `model_not_loaded`: it would load on its first request, `model_load_failed`),
    404 for a name the catalog does not know. Never loads anything."""
    if model is None:
        return await health(request)
    entry = registry.resolve(model)
    status, error = registry.status(entry.id)
    if status == "loaded":
        return JSONResponse({"status": "ok", "model": entry.id})
    if status == "loading":
        return error_response(ModelLoading(f"Model '{entry.id}' is loading; retry shortly."))
    if status == "failed":
        return error_response(DefaultModelUnavailable(f"Model '{entry.id}' failed: {error}", code="model_load_failed"))
    return error_response(ModelNotLoaded(f"Model '{entry.id}' is not loaded; it loads on its first request."))
