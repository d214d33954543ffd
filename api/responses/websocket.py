"""Responses over a WebSocket on `/v1/responses` (OpenAI's WebSocket mode): the client sends `response.create`
events (a create body without `stream` / `background`), the server answers with the same events a streamed create
sends over SSE, as JSON messages.

- Several conversations share one socket: a create's `stream_id` names its lane; a lane's creates run one after
  the other (FIFO), lanes run side by side, and every event of a response echoes its `stream_id`.
- Each turn sends only its new items with `previous_response_id`: the connection remembers its latest responses'
  histories (`RecentResponses`), so a chain continues without reading the store (or at all with `store: false`).
- Same key check (in the handshake: api/auth.py), quotas, logs and metrics as HTTP (each create is logged as a
  request); an error is an `error` event with its HTTP status, on the lane it concerns, and the socket stays open.
- Closing the socket cancels its generations (their slots are freed at once). Pings are answered by the server
  (uvicorn's WebSocket protocol), and it pings idle clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from api.deps import get_registry
from api.error_responses import error_body, validation_failure
from api.observability import recorded_request
from api.pipeline.affinity import affinity_key
from api.responses.protocol import ResponsesRequest
from api.responses.turn import Keeping, RecentResponses, parsed_request, start_turn
from api.serving import LocalRun, requested_keep_alive, requested_tokens, serve_payloads
from backends.registry import LoadedModel
from errors import EngineFailure, InvalidRequest, ServerError

logger = logging.getLogger(__name__)
router = APIRouter()
ROUTE = "/v1/responses (websocket)"
MAX_LANES = 64  # lanes with work queued at once on one socket


@router.websocket("/v1/responses")
@router.websocket("/responses")
async def responses_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await ResponsesConnection(websocket).serve()


class ResponsesConnection:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.state = websocket.app.state
        self.tenant = websocket.state.tenant
        self.recent = RecentResponses()
        self.lanes: dict[str | None, asyncio.Queue] = {}
        self.workers: dict[str | None, asyncio.Task] = {}
        self._sending = asyncio.Lock()

    async def serve(self) -> None:
        try:
            while True:
                await self._take(await self.websocket.receive_text())
        except WebSocketDisconnect:
            pass
        finally:  # the client left: its generations stop (each lease, ticket and slot is given back)
            for worker in self.workers.values():
                worker.cancel()
            await asyncio.gather(*self.workers.values(), return_exceptions=True)

    async def _take(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError as exc:
            await self._error(InvalidRequest(f"The message is not JSON: {exc}", code="invalid_json"), None)
            return
        if not isinstance(event, dict):
            await self._error(InvalidRequest("A message is a JSON object with a 'type'.", param="type"), None)
            return
        kind, lane = event.get("type"), event.get("stream_id")
        if kind == "response.steer":
            await self._error(InvalidRequest("response.steer is not supported by this server: send the input with "
                                             "the next response.create.", param="type"), None)
        elif kind != "response.create":
            await self._error(InvalidRequest(f"Unknown event type {kind!r}: this socket takes response.create.",
                                             param="type"), lane if isinstance(lane, str) else None)
        elif lane is not None and not isinstance(lane, str):
            await self._error(InvalidRequest("'stream_id' must be a string.", param="stream_id"), None)
        elif lane not in self.lanes and len(self.lanes) >= MAX_LANES:
            await self._error(InvalidRequest(f"At most {MAX_LANES} lanes at once on one socket.",
                                             param="stream_id"), lane)
        else:
            if lane not in self.lanes:
                self.lanes[lane] = asyncio.Queue()
                self.workers[lane] = asyncio.create_task(self._run_lane(lane))
            self.lanes[lane].put_nowait(event)

    async def _run_lane(self, lane: str | None) -> None:
        """A lane's creates, one after the other."""
        queue = self.lanes[lane]
        while True:
            event = await queue.get()
            try:
                await self._create(event, lane)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must cost one response, never the socket
                logger.exception("A WebSocket response failed")
                await self._error(EngineFailure("The server had an error while processing this response."), lane)

    async def _create(self, event: dict[str, Any], lane: str | None) -> None:
        body = {key: value for key, value in event.items() if key not in ("type", "stream_id", "stream")}
        settings = self.state.settings
        with self._recorded(body) as record:
            try:
                if body.get("background"):
                    raise InvalidRequest("'background' is not supported over a WebSocket.", param="background")
                parsed = parsed_request(body, settings)
                registry = await get_registry(self.websocket)  # (waits for start-up, as HTTP requests do)
                payloads = await serve_payloads(
                    registry, self.state.quotas, parsed.model, tenant=self.tenant,
                    request_tokens=requested_tokens(body, settings.default_max_tokens),
                    keep_alive=requested_keep_alive(body), start_local=self._starter(parsed))
            except ServerError as exc:
                record.status = exc.status_code
                await self._error(exc, lane)
                return
            except ValidationError as exc:
                record.status = 400
                await self._error(validation_failure(exc), lane)
                return
            record.status = 200
            async with aclosing(payloads):  # (however the loop ends: the socket closed, the task cancelled)
                async for payload in payloads:
                    await self._send({**payload, "stream_id": lane} if lane is not None else payload)

    def _starter(self, parsed: ResponsesRequest):
        async def start_local(model: LoadedModel) -> LocalRun:
            kept = Keeping(parsed, self.tenant, self.state.responses, self.state.conversations, self.recent)
            writer, chunks = await start_turn(parsed, model, self.state.registry, self.state.settings,
                                              self.tenant, kept, self.state.compaction_seal)
            return LocalRun(writer, chunks, stream=True)

        return start_local

    def _recorded(self, body: dict):
        settings = self.state.settings
        return recorded_request(self.state.metrics, settings.log_format == "json", "WEBSOCKET", "/v1/responses",
                                ROUTE, session=affinity_key(None, body))

    async def _error(self, error: ServerError, lane: str | None) -> None:
        event: dict[str, Any] = {"type": "error", "status": error.status_code, **error_body(error)}
        if lane is not None:
            event["stream_id"] = lane
        await self._send(event)

    async def _send(self, payload: dict | str) -> None:
        async with self._sending:  # (lanes write whole messages, one at a time)
            await self.websocket.send_text(payload if isinstance(payload, str) else json.dumps(payload))
