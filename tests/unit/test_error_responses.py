import json

import pytest

from api.error_responses import error_body, error_response
from errors import (
    ContextLengthExceeded,
    EngineBusy,
    EngineFailure,
    InvalidRequest,
    ModelLoading,
    ModelNotFound,
    ModelTooLarge,
    ServerError,
    Unauthorized,
    UpstreamError,
)


def _json(response) -> dict:
    return json.loads(response.body)


def test_error_body_has_openai_shape_with_all_four_fields():
    body = error_body(InvalidRequest("bad temperature", param="temperature"))
    assert body == {
        "error": {
            "message": "bad temperature",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_request",
        }
    }


def test_error_body_keeps_null_param():
    body = error_body(ServerError("boom"))
    assert body["error"]["param"] is None
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["type"] == "server_error"


def test_explicit_code_overrides_class_code():
    body = error_body(InvalidRequest("nope", code="custom_code"))
    assert body["error"]["code"] == "custom_code"
    # The class default is untouched for later instances.
    assert error_body(InvalidRequest("again"))["error"]["code"] == "invalid_request"


def test_subclass_code_is_inherited_with_parent_status():
    exc = ContextLengthExceeded("too long", param="messages")
    response = error_response(exc)
    assert response.status_code == 400
    assert _json(response)["error"]["code"] == "context_length_exceeded"


def test_model_not_found_names_model_and_param():
    response = error_response(ModelNotFound("ghost"))
    assert response.status_code == 404
    error = _json(response)["error"]
    assert "'ghost'" in error["message"]
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("exc_class, code", [(ModelLoading, "model_loading"), (EngineBusy, "server_busy")])
def test_retryable_errors_are_503_with_retry_after(exc_class, code):
    response = error_response(exc_class("later"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert _json(response)["error"]["code"] == code


def test_retry_after_uses_the_instance_value():
    exc = EngineBusy("later")
    exc.retry_after_seconds = 7
    assert error_response(exc).headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    "exc, status",
    [
        (InvalidRequest("x"), 400),
        (Unauthorized("x"), 401),
        (EngineFailure("x"), 500),
        (ModelTooLarge("x"), 507),
    ],
)
def test_errors_without_retry_after_have_no_header(exc, status):
    response = error_response(exc)
    assert response.status_code == status
    assert "retry-after" not in response.headers


def test_upstream_error_uses_per_instance_status_and_type():
    exc = UpstreamError("refused", upstream="up1", status_code=429, code="rate_limited", error_type="rate_limit")
    response = error_response(exc)
    assert response.status_code == 429
    assert _json(response)["error"] == {"message": "refused", "type": "rate_limit", "param": None, "code": "rate_limited"}
    # Class attributes are not changed by an instance.
    assert UpstreamError.status_code == 502


def test_a_validation_error_names_every_offending_value():
    import asyncio

    from fastapi import Request
    from pydantic import ValidationError

    from api.error_responses import _handle_validation_error
    from api.protocol import ChatCompletionRequest

    try:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "temperature": 5,
                                              "top_p": -1})
    except ValidationError as exc:
        error = exc
    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []})
    body = json.loads(asyncio.run(_handle_validation_error(request, error)).body)["error"]
    assert "'temperature'" in body["message"] and "'top_p'" in body["message"] and body["param"] == "temperature"


def test_anthropic_paths_get_anthropic_errors_with_529_for_overload():
    response = error_response(EngineBusy("queue full"), "/v1/messages")
    assert response.status_code == 529
    assert _json(response) == {"type": "error", "error": {"type": "overloaded_error", "message": "queue full"}}
    assert _json(error_response(Unauthorized("who?"), "/messages"))["error"]["type"] == "authentication_error"
