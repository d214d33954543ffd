"""Anthropic's Messages API (`/v1/messages`, bare `/messages`; `?beta=true` as Claude Code calls it) and
`count_tokens`, on every engine through the one serving path: a Messages request is translated to the equivalent
chat request (api/anthropic/request.py) and its answer written as Messages events (api/anthropic/output.py)."""

from __future__ import annotations

import logging
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.anthropic.output import MessagesWriter
from api.anthropic.protocol import CountTokensRequest, CountTokensResponse, Message, MessagesRequest
from api.anthropic.relay import relayed_messages
from api.anthropic.request import count_request, messages_param_names, to_chat_request
from api.deps import RegistryDep, SettingsDep, TenantDep
from api.pipeline.prepare import check_request_limits, prepare_chat, tool_plan
from api.pipeline.reasoning_plan import server_reasoning
from api.serving import LocalRun, client_body, generation_chunks, requested_tokens, serve
from backends.registry import LoadedModel

logger = logging.getLogger(__name__)
router = APIRouter(tags=["messages"])


@router.post("/v1/messages")
@router.post("/messages", include_in_schema=False)
async def create_message(body: MessagesRequest, request: Request, registry: RegistryDep, tenant: TenantDep,
                         settings: SettingsDep) -> Response:
    limit = settings.max_tokens_limit
    if limit and body.max_tokens > limit:  # Anthropic clients hardcode large max_tokens: cut, as to the context
        logger.info("max_tokens %d cut to the server's --max-tokens-limit %d", body.max_tokens, limit)
        body.max_tokens = limit
    with messages_param_names():
        chat = to_chat_request(body)
        check_request_limits(chat, limit, settings.max_messages)

    async def start_local(model: LoadedModel) -> LocalRun:
        with messages_param_names():
            prepared = prepare_chat(chat, model.renderer, model.engine.capabilities,
                                    registry.generation_defaults(model.model_id), server_reasoning(settings))
        requests = [replace(r, clamp_to_context=True) for r in prepared.requests]
        message = Message(model=model.model_id)
        message.usage.input_tokens = model.engine.count_tokens(requests[0].prompt)  # for message_start
        writer = MessagesWriter(message, prepared.output())
        return LocalRun(writer, generation_chunks(model, requests, settings, tenant, body), bool(body.stream))

    sent = client_body(chat)
    return await serve(request, registry, body.model, tenant=tenant,
                       request_tokens=requested_tokens(sent, settings.default_max_tokens), start_local=start_local,
                       relay_path="chat/completions", relay_body=lambda: sent,
                       relay_answer=lambda model: relayed_messages(Message(model=model.model_id), bool(body.stream),
                                                                   tool_plan(chat)))


@router.post("/v1/messages/count_tokens", response_model=CountTokensResponse)
@router.post("/messages/count_tokens", response_model=CountTokensResponse, include_in_schema=False)
async def count_tokens(body: CountTokensRequest, registry: RegistryDep, tenant: TenantDep,
                       settings: SettingsDep) -> CountTokensResponse:
    """The prompt tokens a Messages request with these messages, system, tools and thinking settings uses."""
    with messages_param_names():
        chat = count_request(body)
    async with registry.lease(body.model, tenant.may_use) as model:
        with messages_param_names():
            prepared = prepare_chat(chat, model.renderer, model.engine.capabilities,
                                    registry.generation_defaults(model.model_id), server_reasoning(settings))
        return CountTokensResponse(input_tokens=model.engine.count_tokens(prepared.requests[0].prompt))
