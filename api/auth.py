"""Who is calling: `Authorization: Bearer KEY` or `x-api-key: KEY` -> the key's tenant (role, label, models,
quotas), put on the request's state for the routes. Without any key configured the server is open (everyone is
the open tenant). `/health`, the chat page and its assets stay open (the page sends the key the user types).
Keys are compared in constant time and never logged.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import wants_html
from api.error_responses import error_response
from errors import Unauthorized
from tenants.keys import KeyStore

OPEN_PATHS = {"/health", "/livez", "/readyz", "/chat", "/favicon.ico", "/openapi.json", "/docs"}
OPEN_PREFIXES = ("/chat/assets/",)


def presented_key(headers: Headers) -> bytes | None:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip().encode()
    key = headers.get("x-api-key")
    return key.strip().encode() if key else None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._socket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ring = self.keys.ring  # one ring for the whole request, even if a reload happens meanwhile
        if ring.open or self._is_open(scope):
            scope.setdefault("state", {})["tenant"] = self.keys.open_tenant if ring.open else None
            await self.app(scope, receive, send)
            return
        tenant = ring.tenant_for(presented_key(Headers(scope=scope)))
        if tenant is None:
            error = Unauthorized("Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key'.")
            await error_response(error, scope["path"])(scope, receive, send)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket (Responses' WebSocket mode) presents its key in the handshake, as a request does; without
        a valid one the handshake is refused (403) before anything is read."""
        ring = self.keys.ring
        tenant = self.keys.open_tenant if ring.open else ring.tenant_for(presented_key(Headers(scope=scope)))
        if tenant is None:
            await receive()  # (websocket.connect: the handshake, answered with a refusal)
            await send({"type": "websocket.close", "code": 1008, "reason": "Missing or invalid API key"})
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)

    @staticmethod
    def _is_open(scope: Scope) -> bool:
        path = scope["path"]
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        if path == "/" and scope["method"] == "GET":  # browsers get the (public) chat page there
            return wants_html(Headers(scope=scope).get("accept", ""))
        return False
