"""Two greedy runs of one prompt agree token for token, or part where the model's top two picks nearly tie.

llama.cpp on CPU rounds a row differently with the step it is decoded in (a repacked matrix multiplies one row and
four rows with different kernels; a prompt chunk, a drafted run, a lone token) and with where the sequence's cells
sit in a shared KV cache. A server that has served other requests (a warm prompt cache, other slots busy) repeats a
greedy answer only up to those last bits, and they change a pick only at a near tie. A test that compares two greedy
answers asks for logprobs (top 2 at least) and checks with `assert_same_or_parted_at_near_tie`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Top-2 logprob gap under which rounding may flip a greedy pick: activations are quantised to int8, and splitting one
# prompt over two llama_decode calls already moved gemma's logits by up to 0.96.
NEAR_TIE = 1.0

Entry = Any  # a logprobs entry: a dict or an SDK object with .token and .top_logprobs (each with .logprob)


def _field(value: Any, name: str) -> Any:
    return value[name] if isinstance(value, dict) else getattr(value, name)


def tokens_of(entries: Sequence[Entry]) -> list[str]:
    return [_field(entry, "token") for entry in entries]


def parting_index(first: Sequence[Entry], second: Sequence[Entry]) -> int | None:
    """Where the two runs' tokens first differ (one ending early counts), or None if they are the same."""
    a, b = tokens_of(first), tokens_of(second)
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def top_two_gap(entry: Entry) -> float:
    best, runner_up = (_field(top, "logprob") for top in _field(entry, "top_logprobs")[:2])
    return best - runner_up


def assert_same_or_parted_at_near_tie(first: Sequence[Entry], second: Sequence[Entry], label: str = "") -> int | None:
    """The runs are the same, or where they part both saw a near tie. Returns where they parted (None: nowhere)."""
    split = parting_index(first, second)
    if split is None:
        return None
    for entries in (first, second):
        if split < len(entries):
            gap = top_two_gap(entries[split])
            assert gap < NEAR_TIE, f"{label} parted at token {split} without a near tie (top-2 gap {gap:.3f})"
    return split
