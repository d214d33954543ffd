"""`/v1/completions` (local engines and remote), `/v1/embeddings` (embedding models of the transformers engine,
and remote), `/tokenize` and `/detokenize` (llama-server's shape)."""

from __future__ import annotations

import base64
import struct
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response

from api.completions import handle_completion
from api.deps import RegistryDep
from api.observability import note_model
from api.protocol import CompletionRequest, DetokenizeRequest, EmbeddingRequest, TokenizeRequest
from api.proxy import relay
from backends.registry import ModelRegistry
from errors import InvalidRequest, NotSupported

router = APIRouter(tags=["completions"])


def _model_name(body: Any) -> str | None:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("'model' must be a string.", param="model")
    return name


@router.post("/v1/completions")
@router.post("/completions", include_in_schema=False)
async def completions(request: Request, registry: RegistryDep, body: Any = Body(...)) -> Response:
    name = _model_name(body)
    resources = AsyncExitStack()
    handed_over = False
    try:
        model = await resources.enter_async_context(registry.lease(name))
        if model.engine.relays_requests:
            note_model(model.model_id, model.engine.engine_kind)
            return await relay(model.engine, model.model_id, "completions", body, request)
        # A pydantic ValidationError here becomes the same 400 as FastAPI's own (api/errors.py).
        response = await handle_completion(CompletionRequest.model_validate(body), model, registry, resources, request)
        handed_over = bool(body.get("stream"))
        return response
    finally:
        if not handed_over:
            await resources.aclose()


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)
async def embeddings(request: Request, registry: RegistryDep, body: Any = Body(...)) -> Response:
    async with registry.lease(_model_name(body)) as model:
        if model.engine.relays_requests:
            note_model(model.model_id, model.engine.engine_kind)
            return await relay(model.engine, model.model_id, "embeddings", body, request)
        return await _embed_locally(EmbeddingRequest.model_validate(body), model)


async def _embed_locally(body: EmbeddingRequest, model) -> Response:
    inputs = body.input
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if any(not item for item in inputs):
        raise InvalidRequest("Inputs must not be empty.", param="input")
    native = getattr(model.engine, "dimensions", None)
    if body.dimensions is not None and body.dimensions != native:
        raise InvalidRequest(f"This model's embeddings have {native} dimensions and cannot be shortened.",
                             param="dimensions")
    result = await model.engine.embed(inputs)
    as_base64 = body.encoding_format == "base64"
    data = [
        {"object": "embedding", "index": index,
         "embedding": base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector}
        for index, vector in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": model.model_id, "usage": usage})


async def _engine_for(registry: ModelRegistry, name: str | None):
    model = await registry.ensure_loaded(name)
    if model.engine.relays_requests:
        raise NotSupported("Tokenizing is only available for local models.")
    return model.engine


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, registry: RegistryDep) -> dict:
    return {"tokens": (await _engine_for(registry, body.model)).tokenize(body.content)}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, registry: RegistryDep) -> dict:
    return {"content": (await _engine_for(registry, body.model)).detokenize(body.tokens)}
