"""Request body limits, enforced before the application parses anything: at most `max_body_bytes` (413), each
chunk arriving within `body_timeout` seconds (408, so a slowloris-style client cannot hold a request forever).
The body is read here in full and replayed to the application."""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.error_responses import error_response
from errors import PayloadTooLarge, RequestTimeout


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(self._too_large(), scope["path"])(scope, receive, send)
            return
        # Read the whole body first (API bodies are small), so a refusal is a clean response before any parsing.
        chunks: list[bytes] = []
        received = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                error = RequestTimeout(f"The request body did not arrive within {self.timeout:g} s.")
                await error_response(error, scope["path"])(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await error_response(self._too_large(), scope["path"])(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay_then_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards only a disconnect can come

        await self.app(scope, replay_then_receive, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than this server accepts ({self.max_bytes} bytes).")
