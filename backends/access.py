"""Which models the caller of the current request may use (set per request by the HTTP layer from its API
key; None means all). A context variable, so the registry can enforce it without knowing about HTTP."""

from __future__ import annotations

from contextvars import ContextVar

allowed_models: ContextVar[frozenset[str] | None] = ContextVar("allowed_models", default=None)


def may_use(model_id: str, aliases: tuple[str, ...] = ()) -> bool:
    allowed = allowed_models.get()
    return allowed is None or model_id in allowed or any(alias in allowed for alias in aliases)
