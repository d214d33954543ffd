"""`POST /v1/rerank` (and `/rerank`, `/v2/rerank`): documents scored against a query, best first.

Jina / Cohere shape (`query`, `documents` as strings or `{"text"}` objects, `top_n`, `return_documents`) answered
with `results: [{index, relevance_score, document?}]`; a body with `texts` instead of `documents` is Hugging Face
TEI's (`return_text`, `raw_scores`), answered as TEI does with a bare list `[{index, score, text?}]` (llama-server
accepts both on `/rerank` too). Indices are the documents' positions as sent. Remote models: relayed.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from api.deps import RegistryDep, TenantDep
from api.protocol import model_name_of
from api.rerank.protocol import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    TeiRank,
    TeiRerankRequest,
)
from api.rerank.scoring import rank
from api.serving import LocalWhole, serve
from backends.registry import LoadedModel

router = APIRouter(tags=["rerank"])


@router.post("/v1/rerank", response_model=RerankResponse)
@router.post("/rerank", include_in_schema=False)
@router.post("/v2/rerank", include_in_schema=False)
async def rerank(request: Request, registry: RegistryDep, tenant: TenantDep, body: Any = Body(...)) -> Response:
    tei = isinstance(body, dict) and "texts" in body and "documents" not in body

    async def start_local(model: LoadedModel) -> LocalWhole:
        return await (_tei_answer(body, model) if tei else _answer(body, model))

    return await serve(request, registry, model_name_of(body), tenant=tenant, request_tokens=0,
                       start_local=start_local, relay_path="rerank", relay_body=lambda: body)


async def _answer(body: dict, model: LoadedModel) -> LocalWhole:
    parsed = RerankRequest.model_validate(body)
    ranking = await rank(model, parsed.query, parsed.documents)
    order = sorted(range(len(parsed.documents)), key=lambda index: -ranking.scores[index])[:parsed.top_n]
    results = [RerankResult(index=index, relevance_score=ranking.scores[index],
                            document=RerankDocument(text=parsed.documents[index]) if parsed.return_documents else None)
               for index in order]
    answer = RerankResponse(id=f"rerank-{uuid.uuid4().hex}", model=model.model_id, results=results,
                            usage=RerankUsage(prompt_tokens=ranking.prompt_tokens, total_tokens=ranking.prompt_tokens))
    return LocalWhole(answer.model_dump(exclude_none=True), ranking.prompt_tokens)


async def _tei_answer(body: dict, model: LoadedModel) -> LocalWhole:
    parsed = TeiRerankRequest.model_validate(body)
    ranking = await rank(model, parsed.query, parsed.texts)
    scores = ranking.raw_scores if parsed.raw_scores and ranking.raw_scores is not None else ranking.scores
    order = sorted(range(len(parsed.texts)), key=lambda index: -scores[index])
    answer = [TeiRank(index=index, score=scores[index], text=parsed.texts[index] if parsed.return_text else None)
              for index in order]
    return LocalWhole([item.model_dump(exclude_none=True) for item in answer], ranking.prompt_tokens)
