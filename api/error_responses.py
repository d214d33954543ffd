"""The one place errors become HTTP responses: OpenAI's `{"error": {...}}` shape, and on Anthropic's Messages
paths Anthropic's `{"type": "error", "error": {"type", "message"}}` with its status codes (503 -> 529)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.protocol import ErrorDetail, ErrorResponse
from errors import EngineFailure, InvalidRequest, ServerError

logger = logging.getLogger(__name__)


def error_body(exc: ServerError) -> dict:
    detail = ErrorDetail(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    return ErrorResponse(error=detail).model_dump()


ANTHROPIC_PATHS = ("/v1/messages", "/messages")
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         529: "overloaded_error"}
OVERLOADED = 529  # Anthropic's status for "try again shortly" (ours: 503, loading or queue full)


def speaks_anthropic(path: str) -> bool:
    return path.startswith(ANTHROPIC_PATHS)


def anthropic_status(status_code: int) -> int:
    return OVERLOADED if status_code == 503 else status_code


def anthropic_error_body(exc: ServerError) -> dict:
    status = anthropic_status(exc.status_code)
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_response(exc: ServerError, path: str = "") -> JSONResponse:
    """`path`: the request's, which decides the error's shape."""
    headers = dict(getattr(exc, "headers", None) or {})  # e.g. a 429's x-ratelimit-* headers
    retry_after = getattr(exc, "retry_after_seconds", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if speaks_anthropic(path):
        return JSONResponse(anthropic_error_body(exc), status_code=anthropic_status(exc.status_code), headers=headers)
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=headers)


# Names pydantic puts in an error location for the union member it tried; they mean nothing to users.
_UNION_TAGS = {"str", "int", "float", "bool", "function-after", "constrained-int"}


def _param_from_location(location: tuple) -> str | None:
    """("body", "messages", 0, "role") -> "messages[0].role"."""
    parts = [p for p in location if p != "body"]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "[" in str(part) or str(part)[:1].isupper() or str(part) in _UNION_TAGS:
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or None


def _validation_message(error: dict) -> str:
    if error.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON."
    param = _param_from_location(tuple(error.get("loc", ())))
    where = f" for '{param}'" if param else ""
    return f"Invalid value{where}: {error.get('msg', 'invalid')}."


async def _handle_server_error(request: Request, exc: ServerError) -> JSONResponse:
    if exc.status_code >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.message)
    return error_response(exc, request.url.path)


def validation_failure(exc: RequestValidationError | ValidationError) -> InvalidRequest:
    """A pydantic validation error as the 400 it is: every offending value named (a client fixing one field at a
    time would need as many round trips)."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    code = "invalid_json" if first.get("type") == "json_invalid" else "invalid_value"
    if first.get("type") == "missing":
        code = "missing_required_parameter"
    return InvalidRequest(" ".join(dict.fromkeys(_validation_message(error) for error in errors)) or "Invalid request.",
                          param=_param_from_location(tuple(first.get("loc", ()))), code=code)


async def _handle_validation_error(request: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
    # Also pydantic errors raised inside handlers (a body re-validated as another request type): still the
    # client's input, so a 400, never a 500.
    failure = validation_failure(exc)
    detail = ErrorDetail(message=failure.message, type="invalid_request_error", param=failure.param, code=failure.code)
    if speaks_anthropic(request.url.path):
        return JSONResponse({"type": "error", "error": {"type": detail.type, "message": detail.message}},
                            status_code=400)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=400)


async def _handle_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    detail = ErrorDetail(message=str(exc.detail), type=error_type, param=None, code=code)
    if speaks_anthropic(request.url.path):
        kind = ANTHROPIC_ERROR_TYPES.get(exc.status_code, "api_error" if exc.status_code >= 500 else error_type)
        return JSONResponse({"type": "error", "error": {"type": kind, "message": detail.message}},
                            status_code=exc.status_code, headers=exc.headers)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=exc.status_code, headers=exc.headers)


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error", exc_info=exc)
    return error_response(EngineFailure("The server had an error while processing your request."), request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServerError, _handle_server_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(ValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(Exception, _handle_unexpected)
