"""Per-key quotas and usage: requests and tokens per minute (sliding windows, 60 s unless configured), streams in flight, and the
size of one request (n x max_tokens). Over a limit -> 429 `rate_limit_exceeded` with `Retry-After` and the
`x-ratelimit-*` headers OpenAI sends (which every answer of a limited key carries too).

Tokens are charged when known (prompt + completion, at the end of each choice), so a request is admitted while
the key's last minute is under its limit, as OpenAI does; the answer that crosses the limit is not cut.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from errors import ServerError
from tenants.keys import Tenant


class RateLimited(ServerError):
    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float, headers: dict[str, str]):
        super().__init__(message)
        self.retry_after_seconds = max(1, math.ceil(retry_after))
        self.headers = headers


@dataclass
class KeyUsage:
    """One key's counters (what /admin/usage and the metrics show) and its sliding windows."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    request_times: deque[float] = field(default_factory=deque)
    token_events: deque[tuple[float, int]] = field(default_factory=deque)

    def trim(self, now: float, window: float) -> None:
        while self.request_times and now - self.request_times[0] >= window:
            self.request_times.popleft()
        while self.token_events and now - self.token_events[0][0] >= window:
            self.token_events.popleft()

    def tokens_in_window(self) -> int:
        return sum(tokens for _, tokens in self.token_events)

    def summary(self) -> dict:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "errors": self.errors,
                "rate_limited": self.rate_limited, "in_flight": self.in_flight,
                "requests_last_minute": len(self.request_times), "tokens_last_minute": self.tokens_in_window()}


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `0s`."""
    seconds = max(0, math.ceil(seconds))
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


class Ticket:
    """One admitted request: charge its tokens as they become known; release it when its answer has ended."""

    def __init__(self, book: QuotaBook, tenant: Tenant, usage: KeyUsage) -> None:
        self.book, self.tenant, self.usage = book, tenant, usage
        self._released = False

    def charge(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        self.usage.token_events.append((self.book.clock(), prompt_tokens + completion_tokens))

    def failed(self) -> None:
        self.usage.errors += 1

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.usage.in_flight -= 1

    def headers(self) -> dict[str, str]:
        return self.book.headers(self.tenant, self.usage)


class QuotaBook:
    """Every key's usage, by label. Runs on the event loop only (no locks needed)."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window  # the per-minute limits count in this sliding window (seconds)
        self.clock = clock
        self.keys: dict[str, KeyUsage] = {}

    def usage(self, label: str) -> KeyUsage:
        return self.keys.setdefault(label, KeyUsage())

    def admit(self, tenant: Tenant, request_tokens: int) -> Ticket:
        """Count one request of `tenant` planning up to `request_tokens` (n x max_tokens), or raise RateLimited."""
        usage = self.usage(tenant.label)
        now = self.clock()
        usage.trim(now, self.window)
        refusal = self._refusal(tenant, usage, request_tokens, now)
        if refusal is not None:
            usage.rate_limited += 1
            message, retry_after = refusal
            raise RateLimited(message, retry_after, self.headers(tenant, usage))
        usage.requests += 1
        usage.in_flight += 1
        usage.request_times.append(now)
        return Ticket(self, tenant, usage)

    def _refusal(self, tenant: Tenant, usage: KeyUsage, request_tokens: int, now: float) -> tuple[str, float] | None:
        limits = tenant.limits
        if limits.max_request_tokens is not None and request_tokens > limits.max_request_tokens:
            return (f"This request asks for up to {request_tokens} tokens (n x max_tokens); key '{tenant.label}' "
                    f"may ask for {limits.max_request_tokens} per request. Lower n or max_tokens.", self.window)
        if limits.max_streams is not None and usage.in_flight >= limits.max_streams:
            return (f"Key '{tenant.label}' already has {usage.in_flight} requests in flight (limit "
                    f"{limits.max_streams}); retry when one has finished.", 1.0)
        if limits.requests_per_minute is not None and len(usage.request_times) >= limits.requests_per_minute:
            reset = self.window - (now - usage.request_times[0])
            return (f"Rate limit reached for key '{tenant.label}': {limits.requests_per_minute} requests per "
                    f"minute. Retry in {reset:.0f} s.", reset)
        if limits.tokens_per_minute is not None and usage.tokens_in_window() >= limits.tokens_per_minute:
            reset = self.window - (now - usage.token_events[0][0])
            return (f"Rate limit reached for key '{tenant.label}': {limits.tokens_per_minute} tokens per minute. "
                    f"Retry in {reset:.0f} s.", reset)
        return None

    def headers(self, tenant: Tenant, usage: KeyUsage) -> dict[str, str]:
        limits, now, headers = tenant.limits, self.clock(), {}
        usage.trim(now, self.window)
        if limits.requests_per_minute is not None:
            oldest = usage.request_times[0] if usage.request_times else now
            headers.update({
                "x-ratelimit-limit-requests": str(limits.requests_per_minute),
                "x-ratelimit-remaining-requests": str(max(0, limits.requests_per_minute - len(usage.request_times))),
                "x-ratelimit-reset-requests": _duration(self.window - (now - oldest) if usage.request_times else 0),
            })
        if limits.tokens_per_minute is not None:
            oldest = usage.token_events[0][0] if usage.token_events else now
            headers.update({
                "x-ratelimit-limit-tokens": str(limits.tokens_per_minute),
                "x-ratelimit-remaining-tokens": str(max(0, limits.tokens_per_minute - usage.tokens_in_window())),
                "x-ratelimit-reset-tokens": _duration(self.window - (now - oldest) if usage.token_events else 0),
            })
        return headers
