"""Optional API keys: `Authorization: Bearer KEY` or `x-api-key: KEY`, compared in constant time.

Keys come from `--api-key` (repeatable) and `--api-key-file` (one per line: `KEY` or `KEY model,model` to limit
that key to those models). Without any key configured the server is open. `/health`, the chat page and its
assets stay open (the page then sends the key the user types). Keys are never logged.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.error_responses import error_response
from api.routes_web import wants_html
from backends.access import allowed_models
from errors import Unauthorized

logger = logging.getLogger(__name__)

OPEN_PATHS = {"/health", "/chat", "/favicon.ico", "/openapi.json", "/docs"}
OPEN_PREFIXES = ("/chat/assets/",)


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    models: frozenset[str] | None  # None: every model


def load_keys(keys: list[str], key_file: Path | None) -> list[ApiKey]:
    loaded = [ApiKey(key.encode(), None) for key in keys if key]
    if key_file is not None:
        for number, line in enumerate(key_file.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            secret, _, models = line.partition(" ")
            allowed = frozenset(m.strip() for m in models.split(",") if m.strip()) or None
            loaded.append(ApiKey(secret.encode(), allowed))
    return loaded


def presented_key(headers: Headers) -> bytes | None:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip().encode()
    key = headers.get("x-api-key")
    return key.strip().encode() if key else None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keys = keys

    def _match(self, presented: bytes | None) -> ApiKey | None:
        found = None
        for key in self.keys:  # compare against every key so timing does not tell which prefix matched
            if presented is not None and hmac.compare_digest(presented, key.secret):
                found = key
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        key = self._match(presented_key(Headers(scope=scope)))
        if key is None:
            error = Unauthorized("Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key'.")
            await error_response(error)(scope, receive, send)
            return
        token = allowed_models.set(key.models)
        try:
            await self.app(scope, receive, send)
        finally:
            allowed_models.reset(token)

    @staticmethod
    def _is_open(scope: Scope) -> bool:
        path = scope["path"]
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        if path == "/" and scope["method"] == "GET":  # browsers get the (public) chat page there
            return wants_html(Headers(scope=scope).get("accept", ""))
        return False
