"""Model listing and selection, server status and health."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import RegistryDep
from api.errors import error_response
from api.protocol import ModelCard, ModelList, SetModelRequest
from backends.registry import ModelRegistry
from errors import ModelLoading

router = APIRouter(tags=["models"])


def _model_card(registry: ModelRegistry, path: Path) -> ModelCard:
    current = registry.current
    loaded = current is not None and current.model_id == path.name
    status = "loaded" if loaded else "loading" if registry.loading_id == path.name else "available"
    extra: dict = {"engine": "llama.cpp", "status": status, "loaded": loaded, "size_bytes": path.stat().st_size}
    if loaded:
        engine = current.engine
        extra["context_length"] = engine.context_length
        extra["chat_template"] = engine.chat_template.origin
        renderer = current.renderer
        extra["capabilities"] = {
            **vars(engine.capabilities),
            "native_tool_template": renderer.supports_tools,  # else tools are taught by templates/tool_prompt.jinja
            "tool_call_format": renderer.tool_call_format.name,
        }
    return ModelCard(id=path.name, created=int(path.stat().st_mtime), **extra)


@router.get("/v1/models", response_model=ModelList)
@router.get("/models", response_model=ModelList, include_in_schema=False)
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(data=[_model_card(registry, path) for path in registry.available()])


@router.get("/v1/models/{model_id}", response_model=ModelCard)
@router.get("/models/{model_id}", response_model=ModelCard, include_in_schema=False)
async def get_model(model_id: str, registry: RegistryDep) -> ModelCard:
    resolved = registry.resolve_id(model_id)
    return _model_card(registry, registry.models_dir / resolved)


@router.post("/setModel")
async def set_model(body: SetModelRequest, registry: RegistryDep) -> dict:
    """Load a model (waiting for it) and make it the default for requests that name none."""
    loaded = await registry.set_default(body.modelName)
    return {"status": "ok", "model": loaded.model_id, "context_length": loaded.engine.context_length}


def _status(request: Request) -> dict:
    registry: ModelRegistry = request.app.state.registry
    current = registry.current
    engine = current.engine if current else None
    return {
        "status": registry.state if request.app.state.startup.done() else "loading",
        "model": current.model_id if current else None,
        "default_model": registry.default_model,
        "loading": registry.loading_id,
        "error": registry.last_error,
        "active_sequences": engine.active_sequences() if engine else 0,
        "queued_requests": engine.queued_requests() if engine else 0,
        "prompt_cache": engine.cache_summary() if engine else None,
    }


@router.get("/")
async def server_status(request: Request) -> dict:
    return _status(request)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 when a model is ready to serve, 503 while starting or loading (never blocks)."""
    status = _status(request)
    if status["status"] == "ready":
        return JSONResponse({"status": "ok", "model": status["model"]})
    if status["status"] == "loading":
        return error_response(ModelLoading("The model is loading; retry shortly."))
    return error_response(ModelLoading(f"No model is loaded: {status['error'] or 'none requested'}"))
