"""What the OpenAI answer writers (chat and text completions) share: how their stream ends, whole or broken."""

from __future__ import annotations

from api.error_responses import error_body
from api.serving import AnswerWriter, Payloads
from api.sse import DONE
from errors import ServerError


class OpenAIStreamWriter(AnswerWriter):
    """An OpenAI stream ends with the usage chunk (when `stream_options.include_usage` asked for it) and
    `[DONE]`; a broken one with an `{"error": ...}` event."""

    def usage_chunk(self) -> dict | None:
        """The final chunk carrying the whole answer's usage, or None when the client did not ask for it."""
        return None

    def finish(self) -> Payloads:
        usage = self.usage_chunk()
        return [DONE] if usage is None else [usage, DONE]

    def fail(self, error: ServerError) -> Payloads:
        return [error_body(error)]
