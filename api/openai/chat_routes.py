"""Chat completion routes, under /v1 and bare (clients configured with either base_url work)."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import RegistryDep, SettingsDep, TenantDep
from api.openai.chat_handler import handle_chat_completion
from api.protocol import ChatCompletion, ChatCompletionRequest, ErrorResponse

router = APIRouter(tags=["chat"])

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 500, 503)}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
@router.post("/chat/completions", response_model=ChatCompletion, responses=_ERRORS, include_in_schema=False)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, registry: RegistryDep, tenant: TenantDep, settings: SettingsDep
) -> Response:
    return await handle_chat_completion(body, request, registry, tenant, settings)
