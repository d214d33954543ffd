"""Typed errors raised anywhere below the HTTP layer.

Each carries the OpenAI error fields; `api/error_responses.py` is the one place that turns them into responses.
Engines and chat logic raise these instead of HTTP exceptions so they stay HTTP-agnostic.
"""


class ServerError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServerError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(ServerError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model '{model}' does not exist or is not available here.", param="model")


class ResponseNotFound(ServerError):
    """A stored Responses API object that is not there (never stored, deleted, or another key's)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "response_not_found"

    def __init__(self, response_id: str):
        super().__init__(f"No response with id '{response_id}' is stored for this API key (it was sent with "
                         "store: false, deleted, or never existed).", param="response_id")


class ConversationNotFound(ServerError):
    """A conversation (the web page's, or the Conversations API's) that is not kept for this key (never stored,
    deleted, or another key's)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "conversation_not_found"

    def __init__(self, conversation_id: str, param: str = "id"):
        super().__init__(f"No conversation with id '{conversation_id}' is kept for this API key.", param=param)


class ConversationItemNotFound(ServerError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "item_not_found"

    def __init__(self, item_id: str):
        super().__init__(f"No item with id '{item_id}' in this conversation.", param="item_id")


class ModelLoading(ServerError):
    """The model is not ready yet; clients should retry."""

    status_code = 503
    error_type = "server_error"
    code = "model_loading"
    retry_after_seconds = 1


class DefaultModelUnavailable(ServerError):
    """/health: the default model is missing (`model_not_found`) or failed to load (`model_load_failed`), and
    nothing is loading: retrying will not help until the operator acts."""

    status_code = 503
    error_type = "server_error"
    code = "model_not_found"


class ModelNotLoaded(ServerError):
    """/readyz?model=: the model exists but is not loaded (it loads on its first request)."""

    status_code = 503
    error_type = "server_error"
    code = "model_not_loaded"


class EngineBusy(ServerError):
    """All slots are taken and the waiting queue is full."""

    status_code = 503
    error_type = "server_error"
    code = "server_busy"
    retry_after_seconds = 1


class EngineFailure(ServerError):
    """The engine failed while working on a request (decode error, model load error...)."""

    code = "engine_error"


class EngineCrashed(EngineFailure):
    """The model's worker process died (a signal, a native abort, the OOM killer) while this request was in it. The
    model restarts on its next request; nothing else is affected."""

    code = "engine_crashed"


class NotSupported(ServerError):
    """The model's engine does not offer this operation (e.g. prompt pre-warming on a remote model)."""

    status_code = 501
    error_type = "invalid_request_error"
    code = "not_implemented"


class UpstreamError(ServerError):
    """A remote upstream failed: unreachable or answering 5xx (502), too slow (504), or refusing the request
    (its own 4xx status, its message kept)."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, *, upstream: str, status_code: int = 502, code: str = "upstream_error",
                 error_type: str = "upstream_error", param: str | None = None):
        super().__init__(message, param=param, code=code)
        self.upstream = upstream  # the upstream's name (for metrics; never its URL or key)
        self.status_code = status_code
        self.error_type = error_type


class ModelLoadFailed(ServerError):
    """The model file could not be loaded (corrupt, unsupported architecture...); a later request retries."""

    code = "model_load_failed"


class ModelTooLarge(ServerError):
    """The model cannot fit the memory budget even with every other model unloaded."""

    status_code = 507
    code = "insufficient_memory"


class Unauthorized(ServerError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ServerError):
    """A valid key that may not do this (a user key on an operator endpoint)."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "permission_denied"


class PayloadTooLarge(ServerError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class GenerationTimeout(ServerError):
    """A request ran past --request-timeout; its generation was stopped."""

    status_code = 504
    code = "request_timeout"


class RequestTimeout(ServerError):
    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"
