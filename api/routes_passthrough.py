"""`/v1/completions` and `/v1/embeddings`: relayed to the upstream for remote models. Local engines do not
serve them yet (501)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from api.deps import RegistryDep
from api.proxy import relay
from backends.registry import ModelRegistry
from errors import InvalidRequest, NotSupported

router = APIRouter(tags=["passthrough"])


async def _relay_for_remote(path: str, body: Any, request: Request, registry: ModelRegistry) -> Response:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model_name = body.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise InvalidRequest("'model' is required.", param="model")
    async with registry.lease(model_name) as model:
        if not model.engine.relays_requests:
            raise NotSupported(f"/v1/{path} is not available for local models yet; use /v1/chat/completions.")
        return await relay(model.engine, model.model_id, path, body, request)


@router.post("/v1/completions")
@router.post("/completions", include_in_schema=False)
async def completions(request: Request, registry: RegistryDep, body: Any = Body(...)) -> Response:
    return await _relay_for_remote("completions", body, request, registry)


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)
async def embeddings(request: Request, registry: RegistryDep, body: Any = Body(...)) -> Response:
    return await _relay_for_remote("embeddings", body, request, registry)
