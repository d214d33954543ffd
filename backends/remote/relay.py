"""Relays one request to an upstream, transparently: the remote engine's I/O.

Every field the client sent is forwarded; only `model` is rewritten to the upstream's name, and back to ours in
the answer. A connection error before the upstream answered moves the request to another URL of the pool; once a
byte has been handed on nothing is retried. Errors are typed (`UpstreamError`): an upstream 4xx keeps its status
and message, unreachable or 5xx -> 502, too slow -> 504. A stream is relayed line by line as it arrives and raises
`UpstreamError` if it dies; closing it cancels the upstream request at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from backends.base import RelayedStream, RelayedWhole
from backends.remote.pool import UpstreamPool, UpstreamURL
from errors import UpstreamError

# Connection failures: the upstream never saw the request, so another URL may take it.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class UpstreamCall:
    """One request in flight at one URL. Holds the URL's in-flight count until closed (exactly once)."""

    def __init__(self, pool: UpstreamPool, url: UpstreamURL, response: httpx.Response) -> None:
        self.pool, self.url, self.response = pool, url, response
        self._open = True

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            await self.response.aclose()
            self.pool.release(self.url)

    def broke(self, exc: httpx.HTTPError, what: str) -> UpstreamError:
        """The typed error for a transport failure while reading `what` (a timeout is the upstream's slowness)."""
        if isinstance(exc, httpx.TimeoutException):
            return timed_out(self.pool, f"keep sending {what}")
        self.pool.mark_failed(self.url, exc)
        return UpstreamError(f"Upstream '{self.pool.name}' broke off {what}: {exc}", code="upstream_disconnected",
                             upstream=self.pool.name)


def timed_out(pool: UpstreamPool, what: str) -> UpstreamError:
    return UpstreamError(f"Upstream '{pool.name}' did not {what} in time.", status_code=504, code="upstream_timeout",
                         upstream=pool.name)


async def open_call(pool: UpstreamPool, path: str, payload: dict, headers: dict[str, str]) -> UpstreamCall:
    """Send to the least busy healthy URL; on a connection error try the others. Upstream errors are raised."""
    tried: set[UpstreamURL] = set()
    last_error: Exception | None = None
    while (url := pool.borrow(tried)) is not None:
        tried.add(url)
        request = pool.client.build_request("POST", f"{url.base}/{path}", json=payload,
                                            headers={**headers, **pool.headers()})
        try:
            call = UpstreamCall(pool, url, await pool.client.send(request, stream=True))
        except httpx.TimeoutException as exc:
            pool.release(url)
            raise timed_out(pool, "answer") from exc
        except httpx.HTTPError as exc:  # _RETRYABLE and other transport errors: this URL is out for a while
            pool.release(url)
            pool.mark_failed(url, exc)
            last_error = exc
            continue
        if call.response.status_code >= 400:
            await _raise_upstream_status(call)
        return call
    raise UpstreamError(
        f"Upstream '{pool.name}' is unreachable: {last_error or 'no URL configured'}", code="upstream_unavailable",
        upstream=pool.name,
    )


async def _raise_upstream_status(call: UpstreamCall) -> None:
    try:
        raw = await call.response.aread()
    except httpx.HTTPError:
        raw = b""
    finally:
        await call.aclose()
    response = call.response
    detail = _error_detail(raw)
    message = detail.get("message") or raw.decode("utf-8", errors="replace")[:500] or response.reason_phrase
    if response.status_code < 500:  # the client's fault: its status, the upstream's words
        raise UpstreamError(
            str(message), status_code=response.status_code, code=detail.get("code") or "upstream_rejected",
            error_type=detail.get("type") or "invalid_request_error", param=detail.get("param"),
            upstream=call.pool.name,
        )
    raise UpstreamError(f"Upstream '{call.pool.name}' failed ({response.status_code}): {message}",
                        code="upstream_server_error", upstream=call.pool.name)


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


async def read_whole(call: UpstreamCall, model_id: str, client_gone: Callable[[], Awaitable]) -> RelayedWhole | None:
    """The whole answer, or None when the client left first (the upstream request is dropped)."""
    reading = asyncio.ensure_future(call.response.aread())
    gone = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait([reading, gone], return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            return None
        raw = reading.result()
    except httpx.HTTPError as exc:
        raise call.broke(exc, "its answer") from exc
    finally:
        for task in (reading, gone):
            task.cancel()
        await call.aclose()
    try:
        data = json.loads(raw)
    except ValueError:
        raise UpstreamError(f"Upstream '{call.pool.name}' answered something that is not JSON.",
                            upstream=call.pool.name) from None
    if isinstance(data, dict) and "model" in data:
        data["model"] = model_id
    return RelayedWhole(call.response.status_code, data)


async def start_stream(call: UpstreamCall, upstream_model: str, model_id: str) -> RelayedStream:
    """Wait for the first bytes (so a slow or failing upstream still gets a proper error status), then relay."""
    timeouts = call.pool.config.timeouts
    raw = call.response.aiter_raw()
    try:
        first = await asyncio.wait_for(anext(raw), timeouts.first_byte)
    except BaseException as exc:
        await call.aclose()
        if isinstance(exc, asyncio.TimeoutError):
            raise timed_out(call.pool, "start streaming") from exc
        if isinstance(exc, StopAsyncIteration):
            raise UpstreamError(f"Upstream '{call.pool.name}' sent an empty stream.",
                                code="upstream_disconnected", upstream=call.pool.name) from None
        if isinstance(exc, httpx.HTTPError):
            raise call.broke(exc, "the stream") from exc
        raise
    # From here on httpx enforces the idle timeout on every read (httpcore reads the request's timeout
    # extension at each read), which costs nothing per chunk, unlike a wait_for task per read.
    request = call.response.request
    request.extensions["timeout"] = {**request.extensions.get("timeout", {}), "read": timeouts.idle}
    deadline = time.monotonic() + timeouts.total
    return RelayedStream(_relay_lines(call, first, raw, _model_renamer(upstream_model, model_id), deadline))


async def _relay_lines(call: UpstreamCall, first: bytes, raw: AsyncIterator[bytes], rename, deadline: float):
    # Bytes are handed on as they arrive, cut only at line ends so a model name is never split in two.
    pending = first
    try:
        while True:
            cut = pending.rfind(b"\n") + 1
            if cut:
                yield rename(pending[:cut])
                pending = pending[cut:]
            if time.monotonic() > deadline:
                raise timed_out(call.pool, "finish streaming")
            try:
                pending += await anext(raw)
            except StopAsyncIteration:
                break
        if pending:
            yield rename(pending)
    except httpx.HTTPError as exc:
        raise call.broke(exc, "the stream") from exc
    finally:  # also runs when the client disconnects: closing cancels the upstream request
        await call.aclose()


def _model_renamer(upstream_model: str, model_id: str):
    """Rewrites the upstream's model name to ours in SSE bytes. A targeted substitution rather than a JSON round
    trip per chunk: `"model": "<name>"` cannot occur unescaped in a JSON chunk except as its model field."""
    quoted = json.dumps(upstream_model, ensure_ascii=False).encode()
    pattern = re.compile(rb'"model"\s*:\s*' + re.escape(quoted))
    replacement = b'"model":' + json.dumps(model_id, ensure_ascii=False).encode().replace(b"\\", b"\\\\")
    return lambda data: pattern.sub(replacement, data)
