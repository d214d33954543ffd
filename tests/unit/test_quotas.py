"""Per-key quotas with a controlled clock: limits, refusals with OpenAI's headers, windows that reopen."""

import pytest

from tenants.keys import KeyLimits, Tenant
from tenants.quotas import QuotaBook, RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tenant(**limits) -> Tenant:
    return Tenant(label="alice", limits=KeyLimits(**limits))


def test_requests_per_minute_refuse_with_headers_then_reopen():
    clock = Clock()
    book, alice = QuotaBook(window=60, clock=clock), tenant(requests_per_minute=2)
    first = book.admit(alice, 10)
    assert first.headers()["x-ratelimit-remaining-requests"] == "1"
    book.admit(alice, 10).release()
    first.release()
    clock.now += 15
    with pytest.raises(RateLimited) as refused:
        book.admit(alice, 10)
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.retry_after_seconds == 45
    assert refused.value.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.headers["x-ratelimit-reset-requests"] == "45s"
    clock.now += 45  # the first request leaves the window
    book.admit(alice, 10)
    assert book.usage("alice").rate_limited == 1 and book.usage("alice").requests == 3


def test_tokens_per_minute_count_what_was_charged():
    clock = Clock()
    book, alice = QuotaBook(window=60, clock=clock), tenant(tokens_per_minute=100)
    ticket = book.admit(alice, 10)
    ticket.charge(70, 40)
    ticket.release()
    with pytest.raises(RateLimited) as refused:
        book.admit(alice, 10)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
    clock.now += 61
    assert book.admit(alice, 10).headers()["x-ratelimit-remaining-tokens"] == "100"
    assert book.usage("alice").prompt_tokens == 70 and book.usage("alice").completion_tokens == 40


def test_streams_in_flight_and_request_size():
    book, alice = QuotaBook(), tenant(max_streams=1, max_request_tokens=100)
    ticket = book.admit(alice, 100)
    with pytest.raises(RateLimited, match="in flight"):
        book.admit(alice, 10)
    ticket.release()
    ticket.release()  # releasing twice counts once
    assert book.usage("alice").in_flight == 0
    with pytest.raises(RateLimited, match="n x max_tokens"):
        book.admit(alice, 101)
    book.admit(alice, 100)


def test_unlimited_keys_get_no_rate_headers_and_keys_are_apart():
    book = QuotaBook()
    assert book.admit(Tenant(label="ops", role="admin"), 10**6).headers() == {}
    limited = Tenant(label="bob", limits=KeyLimits(max_streams=1))
    book.admit(limited, 1)
    book.admit(Tenant(label="carol", limits=KeyLimits(max_streams=1)), 1)  # bob's stream is not carol's
    assert book.usage("bob").in_flight == book.usage("carol").in_flight == 1
