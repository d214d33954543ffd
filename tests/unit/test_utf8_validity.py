"""Utf8Validity against Python's strict UTF-8 decoder, and Utf8Table against Utf8Validity, token by token."""

from __future__ import annotations

import random

import pytest

from backends.utf8_validity import Utf8Table, Utf8Validity


def well_formed(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_agrees_with_the_strict_decoder_on_random_and_tricky_bytes():
    rng = random.Random(0)
    tricky = [b"\xed\xa0\x80", b"\xed\x9f\xbf", b"\xc0\x80", b"\xe0\x80\x80", b"\xe0\xa0\x80", b"\xf4\x90\x80\x80",
              b"\xf4\x8f\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf5\x80\x80\x80", "ü東🙂".encode()]
    samples = tricky + [bytes(rng.choice([rng.randrange(256), rng.randrange(0x80, 0xC0), 0xED, 0xF4, 0xE0])
                              for _ in range(rng.randrange(1, 8))) for _ in range(20000)]
    for data in samples:
        state = Utf8Validity()
        fed = state.feed(data)
        assert (fed and state.owed == 0) == well_formed(data), data


@pytest.mark.parametrize("split", [1, 2, 3])
def test_a_sequence_split_across_tokens_is_judged_as_a_whole(split):
    state = Utf8Validity()
    assert state.feed("🙂".encode()[:split])
    assert state.accepts("🙂".encode()[split:]) and not state.accepts(b"A")
    surrogate = Utf8Validity()
    assert surrogate.feed(b"\xed") and not surrogate.accepts(b"\xa0") and surrogate.accepts(b"\x9f")


def test_the_table_forbids_exactly_the_tokens_that_break_the_stream():
    tokens = [b"", b"a", b"\xed", b"\xa0", b"\x9f", b"\x80\x80", b"\x80A", b"\xa0\x80", "é".encode(), b"\xc3", b"\xff"]
    table = Utf8Table(tokens)
    for prefix in [b"", b"\xed", b"\xc3", b"\xf0", b"\xf0\x9f", b"\xe2\x82"]:
        state = Utf8Validity()
        assert state.feed(prefix)
        expected = [not state.accepts(raw) for raw in tokens]
        assert table.ill_formed_after(state).tolist() == expected, prefix
