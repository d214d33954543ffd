"""Relays a request for a remote model to its upstream, transparently.

Every field the client sent is forwarded (tools, response_format, logprobs, n, vendor extensions); only `model`
is rewritten to the upstream's name, and back to ours in the answer. Streams are relayed line by line as they
arrive, never buffered. A connection error before the upstream answered moves the request to another URL of the
pool; once a byte has reached the client nothing is retried. Errors keep the OpenAI shape: an upstream 4xx
passes through with its message, unreachable or 5xx -> 502, too slow -> 504, a stream that dies -> one error
event, then the end. A client that goes away cancels the upstream request at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.choice_streams import wait_for_disconnect
from api.errors import error_body
from api.observability import note_upstream_error
from backends.remote.engine import RemoteEngine
from backends.remote.pool import UpstreamPool, UpstreamURL
from errors import UpstreamError

logger = logging.getLogger(__name__)

# Connection failures: the upstream never saw the request, so another URL may take it.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def client_body(body) -> dict:
    """What the client sent, as it sent it: set fields only (defaults are the upstream's to pick), extras kept."""
    return body.model_dump(mode="json", exclude_unset=True, by_alias=True)


async def relay(engine: RemoteEngine, model_id: str, path: str, body: dict, request: Request) -> Response:
    pool = engine.pool
    payload = {**body, "model": engine.upstream_model}
    try:
        response, url = await _open(pool, path, payload)
        if response.status_code >= 400:
            await _raise_upstream_status(pool, response, url)
        if body.get("stream"):
            return await _relay_stream(pool, response, url, engine.upstream_model, model_id)
        return await _relay_whole(pool, response, url, model_id, request)
    except UpstreamError as exc:
        if exc.status_code >= 500:
            note_upstream_error(pool.name, exc.code)
        raise


async def _open(pool: UpstreamPool, path: str, payload: dict) -> tuple[httpx.Response, UpstreamURL]:
    """Send to the least busy healthy URL; on a connection error try the others."""
    tried: set[UpstreamURL] = set()
    last_error: Exception | None = None
    while (url := pool.pick(tried)) is not None:
        tried.add(url)
        url.in_flight += 1
        request = pool.client.build_request("POST", f"{url.base}/{path}", json=payload, headers=pool.headers())
        try:
            return await pool.client.send(request, stream=True), url
        except _RETRYABLE as exc:
            url.in_flight -= 1
            pool.mark_failed(url, exc)
            last_error = exc
        except httpx.TimeoutException as exc:
            url.in_flight -= 1
            raise _timeout(pool, "answer") from exc
        except httpx.HTTPError as exc:
            url.in_flight -= 1
            pool.mark_failed(url, exc)
            last_error = exc
    raise UpstreamError(
        f"Upstream '{pool.name}' is unreachable: {last_error or 'no URL configured'}", code="upstream_unavailable"
    )


def _timeout(pool: UpstreamPool, what: str) -> UpstreamError:
    return UpstreamError(f"Upstream '{pool.name}' did not {what} in time.", status_code=504, code="upstream_timeout")


async def _raise_upstream_status(pool: UpstreamPool, response: httpx.Response, url: UpstreamURL) -> None:
    try:
        raw = await response.aread()
    except httpx.HTTPError:
        raw = b""
    finally:
        await response.aclose()
        url.in_flight -= 1
    detail = _error_detail(raw)
    message = detail.get("message") or raw.decode("utf-8", errors="replace")[:500] or response.reason_phrase
    if response.status_code < 500:  # the client's fault: its status, the upstream's words
        raise UpstreamError(
            str(message), status_code=response.status_code, code=detail.get("code") or "upstream_rejected",
            error_type=detail.get("type") or "invalid_request_error", param=detail.get("param"),
        )
    raise UpstreamError(f"Upstream '{pool.name}' failed ({response.status_code}): {message}",
                        code="upstream_server_error")


def _error_detail(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    return {"message": data.get("detail") or data.get("message")} if isinstance(data, dict) else {}


async def _relay_whole(
    pool: UpstreamPool, response: httpx.Response, url: UpstreamURL, model_id: str, request: Request
) -> Response:
    reading = asyncio.ensure_future(response.aread())
    disconnected = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait([reading, disconnected], return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            return Response(status_code=499)  # the client left: the upstream request is dropped below
        raw = reading.result()
    except httpx.TimeoutException as exc:
        raise _timeout(pool, "answer") from exc
    except httpx.HTTPError as exc:
        pool.mark_failed(url, exc)
        raise UpstreamError(f"Upstream '{pool.name}' broke off its answer: {exc}", code="upstream_disconnected") from exc
    finally:
        for task in (reading, disconnected):
            task.cancel()
        await response.aclose()
        url.in_flight -= 1
    try:
        data = json.loads(raw)
    except ValueError:
        raise UpstreamError(f"Upstream '{pool.name}' answered something that is not JSON.") from None
    if isinstance(data, dict) and "model" in data:
        data["model"] = model_id
    return JSONResponse(data, status_code=response.status_code)


async def _relay_stream(
    pool: UpstreamPool, response: httpx.Response, url: UpstreamURL, pool_model: str, model_id: str
) -> Response:
    timeouts = pool.config.timeouts
    deadline = time.monotonic() + timeouts.total
    raw = response.aiter_raw()
    # Wait for the first bytes before answering, so a slow or failing upstream still gets a proper error status.
    try:
        first = await asyncio.wait_for(anext(raw), timeouts.first_byte)
    except BaseException as exc:
        await response.aclose()
        url.in_flight -= 1
        if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)):
            raise _timeout(pool, "start streaming") from exc
        if isinstance(exc, StopAsyncIteration):
            raise UpstreamError(f"Upstream '{pool.name}' sent an empty stream.", code="upstream_disconnected") from None
        if isinstance(exc, httpx.HTTPError):
            pool.mark_failed(url, exc)
            raise UpstreamError(f"Upstream '{pool.name}' broke off: {exc}", code="upstream_disconnected") from exc
        raise
    # From here on httpx enforces the idle timeout on every read (httpcore reads the request's timeout
    # extension at each read), which costs nothing per chunk, unlike a wait_for task per read.
    response.request.extensions["timeout"] = {**response.request.extensions.get("timeout", {}), "read": timeouts.idle}
    rename = _model_renamer(pool_model, model_id)

    async def events() -> AsyncIterator[bytes]:
        # Bytes are relayed as they arrive, cut only at line ends so a model name is never split in two.
        pending = first
        try:
            while True:
                cut = pending.rfind(b"\n") + 1
                if cut:
                    yield rename(pending[:cut])
                    pending = pending[cut:]
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError
                try:
                    pending += await anext(raw)
                except StopAsyncIteration:
                    break
            if pending:
                yield rename(pending)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            yield _error_event(pool, _timeout(pool, "keep streaming"))
        except httpx.HTTPError as exc:
            pool.mark_failed(url, exc)
            yield _error_event(pool, UpstreamError(f"Upstream '{pool.name}' broke off the stream: {exc}",
                                             code="upstream_disconnected"))
        finally:  # also runs when the client disconnects: closing cancels the upstream request
            await response.aclose()
            url.in_flight -= 1

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _model_renamer(upstream_model: str, model_id: str):
    """Rewrites the upstream's model name to ours in SSE bytes. A targeted substitution rather than a JSON round
    trip per chunk: `"model": "<name>"` cannot occur unescaped in a JSON chunk except as its model field."""
    quoted = json.dumps(upstream_model, ensure_ascii=False).encode()
    pattern = re.compile(rb'"model"\s*:\s*' + re.escape(quoted))
    replacement = b'"model":' + json.dumps(model_id, ensure_ascii=False).encode().replace(b"\\", b"\\\\")
    return lambda data: pattern.sub(replacement, data)


def _error_event(pool: UpstreamPool, error: UpstreamError) -> bytes:
    note_upstream_error(pool.name, error.code)
    logger.warning("%s", error.message)
    return f"data: {json.dumps(error_body(error))}\n\n".encode()
