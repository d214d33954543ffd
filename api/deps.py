"""FastAPI dependencies: the app state routes need, reached through `Annotated` aliases."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from backends.registry import ModelRegistry
from errors import PermissionDenied, Unauthorized
from settings import Settings
from state.conversation_store import ConversationStore
from state.response_store import ResponseStore
from tenants.keys import KeyStore, Tenant
from tenants.quotas import QuotaBook


async def get_registry(request: HTTPConnection) -> ModelRegistry:
    """The model registry, once start-up (assembling and loading the default model) has finished.

    Requests (and WebSocket messages) that arrive during start-up wait for it rather than failing; `/health`
    reports it instead.
    """
    startup: asyncio.Task = request.app.state.startup
    if not startup.done():
        await asyncio.shield(startup)
    return request.app.state.registry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_response_store(request: Request) -> ResponseStore:
    return request.app.state.responses


StoreDep = Annotated[ResponseStore, Depends(get_response_store)]


def get_conversation_store(request: Request) -> ConversationStore:
    return request.app.state.conversations


ConversationsDep = Annotated[ConversationStore, Depends(get_conversation_store)]


def current_tenant(request: Request) -> Tenant:
    """The caller, as the API-key middleware identified it (the open tenant when no key is configured)."""
    tenant = getattr(request.state, "tenant", None)
    if tenant is not None:
        return tenant
    keys = request.app.state.keys
    if keys.ring.open:
        return keys.open_tenant
    # An open path (no key checked) must never act as anyone, least of all as the all-powerful open tenant.
    raise Unauthorized("Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key'.")


def require_admin(request: Request) -> Tenant:
    """Operator endpoints: an administrator key, else 403 `permission_denied` (nothing is done)."""
    tenant = current_tenant(request)
    if not tenant.is_admin:
        no_admin = not request.app.state.keys.ring.has_admin
        raise PermissionDenied(
            "This endpoint needs an administrator key; no admin key is configured, so operator endpoints are off."
            if no_admin else f"Key '{tenant.label}' is a user key; this endpoint needs an administrator key."
        )
    return tenant


def get_quotas(request: Request) -> QuotaBook:
    return request.app.state.quotas


def get_keys(request: Request) -> KeyStore:
    return request.app.state.keys


TenantDep = Annotated[Tenant, Depends(current_tenant)]
AdminDep = Annotated[Tenant, Depends(require_admin)]
QuotasDep = Annotated[QuotaBook, Depends(get_quotas)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]


def wants_html(accept: str) -> bool:
    """A browser navigating here (its Accept lists text/html before or without JSON)."""
    accept = accept.lower()
    return "text/html" in accept and ("application/json" not in accept or accept.index("text/html") < accept.index("application/json"))
