"""`/v1/embeddings`: embedding models of either local engine, remote models relayed."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from api.deps import RegistryDep, TenantDep
from api.openai.protocol import Embedding, EmbeddingList, EmbeddingUsage
from api.protocol import EmbeddingRequest, model_name_of
from api.serving import LocalWhole, serve
from backends.registry import LoadedModel
from errors import InvalidRequest

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingList)
@router.post("/embeddings", include_in_schema=False)
async def embeddings(request: Request, registry: RegistryDep, tenant: TenantDep, body: Any = Body(...)) -> Response:
    async def start_local(model: LoadedModel) -> LocalWhole:
        answer = await embed(EmbeddingRequest.model_validate(body), model)
        return LocalWhole(answer.model_dump(), answer.usage.prompt_tokens)

    return await serve(request, registry, model_name_of(body), tenant=tenant, request_tokens=0,
                       start_local=start_local, relay_path="embeddings", relay_body=lambda: body)


async def embed(body: EmbeddingRequest, model: LoadedModel) -> EmbeddingList:
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
        Embedding(index=index, embedding=base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                  if as_base64 else list(vector))
        for index, vector in enumerate(result.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=model.model_id, usage=usage)
