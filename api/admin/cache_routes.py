"""Prompt cache routes: pre-warm it from a conversation (`POST /restore_cache`) and inspect it (`GET /cache`)."""

from __future__ import annotations

import time

from fastapi import APIRouter

from api.deps import QuotasDep, RegistryDep, TenantDep
from api.pipeline.prepare import render_for_cache
from api.protocol import ChatCompletionRequest, ErrorResponse, RestoreCacheRequest, RestoreCacheResponse

router = APIRouter(tags=["cache"])

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 501, 503)}


@router.post("/restore_cache", response_model=RestoreCacheResponse, responses=_ERRORS)
@router.post("/v1/restore_cache", response_model=RestoreCacheResponse, include_in_schema=False)
async def restore_cache(
    body: RestoreCacheRequest, registry: RegistryDep, tenant: TenantDep, quotas: QuotasDep
) -> RestoreCacheResponse:
    """Evaluate the prompt these messages and tools render to and keep its state in memory and on disk, so
    the next chat request continuing the conversation (even after a restart) starts at once."""
    started = time.perf_counter()
    # Only the fields restore_cache defines: anything else the client added has no meaning here.
    fields = set(RestoreCacheRequest.model_fields)
    chat = ChatCompletionRequest.model_validate(body.model_dump(by_alias=True, exclude_none=True, include=fields))
    # A key warms only models it may use, within its quotas (the prompt's tokens count as used).
    ticket = quotas.admit(tenant, 0)
    try:
        async with registry.lease(body.model, tenant.may_use) as model:
            prompt, conversation = render_for_cache(chat, model.renderer, registry.generation_defaults(model.model_id))
            warmed = await model.engine.warm_prompt(prompt, conversation)
        ticket.charge(warmed.prompt_tokens - warmed.reused_tokens, 0)
    finally:
        ticket.release()
    return RestoreCacheResponse(
        model=model.model_id,
        prompt_tokens=warmed.prompt_tokens,
        cached_tokens=warmed.cached_tokens,
        reused_tokens=warmed.reused_tokens,
        seconds=round(time.perf_counter() - started, 4),
    )


@router.get("/cache")
async def cache_status(registry: RegistryDep, tenant: TenantDep, model: str | None = None) -> dict:
    """A loaded model's prompt cache (`?model=`, default: the default model): entries, bytes, hits, misses,
    restored tokens, saves."""
    entry = registry.resolve(model, tenant.may_use)
    loaded = registry.loaded_model(entry.id)
    summary = loaded.engine.cache_summary() if loaded else None
    return {"model": entry.id, "loaded": loaded is not None, "enabled": summary is not None, **(summary or {})}
