"""`/v1/completions` (legacy text completions: local engines, remote relayed) and llama-server's `/tokenize`,
`/detokenize` and `/apply-template`, and vLLM's `/v1/chat/completions/render` and `/v1/completions/render` (a
KV-aware router asks for a request's tokens there). The body is validated here, not by FastAPI, so a remote upstream gets exactly what was sent."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from api.deps import RegistryDep, SettingsDep, TenantDep
from api.openai.completions import start_completion
from api.openai.protocol import ApplyTemplateResponse, DetokenizeResponse, RenderResponse, TokenizeResponse
from api.pipeline.prepare import render_for_cache
from api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    model_name_of,
)
from api.serving import LocalRun, requested_tokens, serve
from backends.base import Engine
from backends.registry import LoadedModel, ModelRegistry
from errors import InvalidRequest, NotSupported
from tenants.keys import Tenant

router = APIRouter(tags=["completions"])


@router.post("/v1/completions")
@router.post("/completions", include_in_schema=False)
async def completions(request: Request, registry: RegistryDep, tenant: TenantDep, settings: SettingsDep,
                      body: Any = Body(...)) -> Response:

    async def start_local(model: LoadedModel) -> LocalRun:
        # A pydantic ValidationError here becomes the same 400 as FastAPI's own (api/error_responses.py).
        parsed = CompletionRequest.model_validate(body)
        return start_completion(parsed, model, registry, settings, tenant)

    name = model_name_of(body)
    return await serve(request, registry, name, tenant=tenant,
                       request_tokens=requested_tokens(body, settings.default_max_tokens), start_local=start_local,
                       relay_path="completions", relay_body=lambda: body)


async def _local_model(registry: ModelRegistry, name: str | None, tenant: Tenant) -> LoadedModel:
    model = await registry.ensure_loaded(name, tenant.may_use)
    if model.engine.relays_requests:
        raise NotSupported("Tokenizing and templates are only available for local models.")
    return model


async def _local_engine(registry: ModelRegistry, name: str | None, tenant: Tenant) -> Engine:
    return (await _local_model(registry, name, tenant)).engine


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, registry: RegistryDep, tenant: TenantDep) -> TokenizeResponse:
    return TokenizeResponse(tokens=(await _local_engine(registry, body.model, tenant)).tokenize(body.content))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, registry: RegistryDep, tenant: TenantDep) -> DetokenizeResponse:
    return DetokenizeResponse(content=(await _local_engine(registry, body.model, tenant)).detokenize(body.tokens))


@router.post("/apply-template", response_model=ApplyTemplateResponse)
async def apply_template(body: ChatCompletionRequest, registry: RegistryDep, tenant: TenantDep) -> ApplyTemplateResponse:
    """The prompt a chat request renders to (its messages, tools, template variables), as llama-server answers it:
    for seeing what the model's template makes of a conversation."""
    model = await _local_model(registry, body.model, tenant)
    return ApplyTemplateResponse(prompt=_rendered(body, model, registry))


def _rendered(body: ChatCompletionRequest, model: LoadedModel, registry: ModelRegistry) -> str:
    """The prompt a chat request evaluates on `model` (an image renders as its marker, `<__media__>`)."""
    prompt, _ = render_for_cache(body, model.renderer, registry.generation_defaults(model.model_id),
                                 model.engine.capabilities)
    return prompt


@router.post("/v1/chat/completions/render", response_model=RenderResponse)
@router.post("/chat/completions/render", response_model=RenderResponse, include_in_schema=False)
async def render_chat(body: ChatCompletionRequest, registry: RegistryDep, tenant: TenantDep) -> RenderResponse:
    """The token ids a chat request's prompt evaluates, as vLLM renders them: vllm-router's kv_aware policy asks
    before it routes, to match the prompt against the blocks each replica announced (--kv-events)."""
    model = await _local_model(registry, body.model, tenant)
    return RenderResponse(model=model.model_id, token_ids=model.engine.tokenize(_rendered(body, model, registry)))


@router.post("/v1/completions/render", response_model=RenderResponse)
@router.post("/completions/render", response_model=RenderResponse, include_in_schema=False)
async def render_completion(body: CompletionRequest, registry: RegistryDep, tenant: TenantDep) -> RenderResponse:
    """A completion request's prompt tokens (one prompt: a text, or token ids as they are)."""
    model = await _local_model(registry, body.model, tenant)
    prompt = body.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return RenderResponse(model=model.model_id, token_ids=model.engine.tokenize(prompt))
    if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
        return RenderResponse(model=model.model_id, token_ids=prompt)
    raise InvalidRequest("Render one prompt at a time.", param="prompt")
