"""Speculative decoding by prompt lookup: drafts from the sequence's own tokens, verified in the scheduler's batch.

On CPU a decode step costs about the same for one token as for a few more of the same sequence (the weights are
read once for all of them), so guessing the next tokens and checking them in the same step as the token we have
gives several tokens for little more than the price of one, when the guesses are right. Output that repeats its
input (rewriting code, quoting, filling a template, JSON keys) is guessed well by looking up where the latest
tokens appeared before and proposing what followed them then (n-gram prompt lookup, as llama.cpp's `ngram`
speculation and transformers' prompt lookup decoding do).

Verification keeps the output exactly what decoding without speculation gives: each drafted position is *sampled*
with the sequence's own sampler chain (bias, penalties, grammar, temperature, seed), in order, and a draft token
counts only while it equals that sample; the first sample that differs is kept as the next token, and the rest of
the draft is removed from the KV cache. The chain sees exactly the tokens, and draws exactly the random numbers,
it would have without speculation, so greedy and seeded sampling give identical text and any temperature keeps
the model's own distribution. (Speculative sampling proper, accepting by probability ratio, accepts more often
at temperature > 0 but changes which random numbers are drawn; with a deterministic drafter it gains nothing.)

With `pool_tokens` (--spec-pool-tokens, off by default), drafts may also come from other sequences (`DraftPool`): the
ones decoding beside this one and the last few that finished. Their tokens are indexed already (each sequence's own drafter), so this costs only extra dict lookups, and
it is where repeated work pays most: the same request again (a retry, a regenerate, n > 1, an agent's loop), sibling
streams, the next turn quoting the previous answer. A match there counts only if it is at least `pool_ngram_min`
tokens long; the sequence's own match wins a tie (it is the nearer context). llama.cpp's `ngram-mod` shares one
table across all slots and requests in the same spirit (see docs/research/ngram-mod.md). It is off by default: a
repeat drafted from the earlier answer is checked in steps of other shapes, which llama.cpp rounds differently, so a
greedy repeat may then differ at a near tie.

Speculation backs off by itself: the draft length grows after fully accepted drafts and shrinks after rejections,
a sequence whose drafts keep failing stops drafting for a while (twice as long each time), and the scheduler caps
the tokens a step may hold so that drafts never crowd out other sequences' decoding.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

SpecMode = Literal["off", "ngram", "draft"]  # draft: a draft model guesses (draft_model.py)


@dataclass(frozen=True)
class SpeculationOptions:
    mode: SpecMode = "ngram"
    # A step's rows are the sampled token and the draft: 64 and 16 rows are whole tiles of ggml's CPU kernels
    # (row_cost.py), 65 and 17 rows cost a spilled row more.
    draft_max: int = 63  # most tokens drafted for a sequence in one step (reached only by doubling, see verified)
    draft_start: int = 15  # a sequence's first drafts are at most this long
    draft_min: int = 1  # a draft shorter than this is not worth a step's extra rows
    ngram_max: int = 8  # longest run of latest tokens looked up
    ngram_min: int = 2  # shortest (single tokens match too often by chance)
    max_sequences: int = 8  # steps with more sequences decoding check no drafts (CPU: a row costs what a token does)
    few_sequences: int = 2  # steps with more are busy: only drafts from long matches that keep holding (busy_*)
    busy_ngram_min: int = 6  # shortest match drafted from in a busy step
    busy_row_cost: float = 0.75  # a busy step's row, in tokens, until measured (row_cost.py): see busy_budget
    busy_draft_max: int = 7  # longest draft in a busy step (8 rows a sequence: whole tiles whatever the count)
    busy_evidence: int = 8  # a sequence's busy drafts are probes of at most busy_probe tokens until it has drafted
    busy_probe: int = 4  # this many (its hold is not known before)
    pool_ngram_min: int = 4  # shortest match taken from another sequence's tokens
    pool_tokens: int = 0  # tokens of finished sequences kept to draft from (0: no drafts from other sequences)

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.draft_max > 0


NO_SPECULATION = SpeculationOptions(mode="off")
MAX_COOLDOWN = 64  # steps a sequence whose drafts keep failing waits before drafting again, at most


class SequenceDrafter:
    """One sequence's speculation state: every token of the sequence so far (prompt, then each sampled token),
    indexed by the n-grams ending just before each position (a prompt lookup is one dict access per n-gram
    length), the adapted draft length and the counts. With a draft model the guesses come from there instead."""

    def __init__(self, prompt_tokens: list[int], options: SpeculationOptions) -> None:
        self.options = options
        self.tokens: list[int] = []
        self._follower: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(options.ngram_min, options.ngram_max + 1)}
        self.length = min(options.draft_start, options.draft_max)  # current draft length, adapted to how drafts fare
        self._misses = 0  # drafts in a row with nothing accepted
        self._run = 0  # tokens accepted since the last draft that missed
        self._typical_run = float(options.draft_start)  # how many tokens drafts hold before one misses (average)
        self._cooldown = 0  # steps left without drafting
        self.drafted = 0
        self.accepted = 0
        self.broken = 0  # drafts a guess of which was not accepted (so accepted / (accepted + broken): how often a
        # guessed token holds where the ones before it did)
        for token in prompt_tokens:
            self.push(token)

    def push(self, token: int) -> None:
        """A token became part of the sequence (a prompt token, or one sampled, drafted or not)."""
        tokens = self.tokens
        tokens.append(token)
        position = len(tokens) - 1
        for n, followers in self._follower.items():
            if position >= n:
                followers[tuple(tokens[position - n:position])] = position  # the latest occurrence wins

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` tokens guessed to follow the sequence by prompt lookup, or none."""
        return self.lookup(self.budget(limit))

    def budget(self, limit: int) -> int:
        """How many tokens to draft now (0: none): the adapted length within `limit`, none while pausing."""
        if self._cooldown > 0:
            self._cooldown -= 1
            return 0
        limit = min(limit, self.length)
        return limit if limit >= self.options.draft_min else 0

    def busy_budget(self, limit: int, row_cost: float | None = None) -> int:
        """How many tokens to draft in a busy step, where a row costs `row_cost` of a token (default busy_row_cost;
        the scheduler measures it, row_cost.py): short probes until the sequence's drafts have shown how they hold,
        then as many as pay, busy_draft_max at most. The k-th guessed row gives a token only if the k guesses up to
        it all hold: with each holding `hold` of the time where the ones before it did, hold^k; so rows while
        hold^k >= row_cost (at 8 streams a row costs 0.7-0.8 of a token: guesses that hold 95 % of the time get 4-5
        rows). The cap is for what that estimate cannot see: misses come together (the end of a copied block, a
        renamed word), and a miss there throws away a whole draft in every sequence. 8 gemma streams rewriting code
        (the same copy, 2 renames; Xeon, aggregate tok/s against no speculation, 2 rounds each): drafts up to 63
        made steps of 450 rows, 2.5 s each, with 73 % held, and lost (0.95-1.05x); capped at 15: 1.14-1.17x; at 7:
        1.17-1.21x; at 3: 1.10-1.24x."""
        if self.drafted < self.options.busy_evidence:
            return self.budget(min(limit, self.options.busy_probe))
        limit = min(limit, self.options.busy_draft_max)
        paying = self.paying_rows(row_cost or self.options.busy_row_cost)
        if paying is not None:
            limit = min(limit, paying)
        return self.budget(limit) if limit > 0 else 0  # (0: no draft, and its cooldown not spent on one)

    def paying_rows(self, row_cost: float) -> int | None:
        """Most guessed rows worth a step where a row costs `row_cost` of a token: the k-th gives a token only if the
        k guesses up to it hold, hold^k, with `hold` how often a guess held where the ones before it did. None
        where none has failed yet (no bound). (Used in busy steps only: in quiet ones it cut quotes' long copies,
        whose misses come at the ends of quotes, to a few rows: SmolLM2 quoting 1.35x -> 1.1x.)"""
        if not self.broken:
            return None
        hold = self.accepted / (self.accepted + self.broken)
        return int(math.log(row_cost) / math.log(hold)) if hold > row_cost else 0

    def lookup(self, limit: int, others: tuple[SequenceDrafter, ...] = (), shortest: int = 0) -> list[int]:
        """Up to `limit` tokens following the sequence where its latest tokens occurred before: in its own tokens,
        or (a longer match) in `others`' (a DraftPool's); only matches of at least `shortest` tokens if given."""
        draft = self.continuation([], limit, others, shortest)
        if not draft or len(draft) < self.options.draft_min:
            return []
        self.drafted += len(draft)
        return draft

    def continuation(self, draft: list[int], limit: int, others: tuple[SequenceDrafter, ...] = (),
                     shortest: int = 0) -> list[int]:
        """`draft` continued by lookup up to `limit` tokens in all (uncounted: a step's padding, see
        speculative_steps.py, asks for a few more tokens after a draft this way)."""
        longest, draft = self.options.ngram_max, list(draft)
        while len(draft) < limit:  # a continuation that reaches the end is looked up again from there (cycles)
            tail = self.tokens[-longest:] + draft if len(draft) < longest else draft
            found = self._follower_of(tail[-longest:], others, shortest)
            if found is None:
                break
            source, follower, matched = found
            # a short match is weak evidence: trust it for a few tokens only (2 tokens matched: 2, 3: 4, 4: 8...)
            trusted = min(limit - len(draft), 2 ** (matched - 1))
            draft += source[follower:follower + trusted]
        if any(token < 0 for token in draft):  # a media placeholder is no token: guess only up to it
            draft = draft[: next(i for i, token in enumerate(draft) if token < 0)]
        return draft

    def _follower_of(self, tail: list[int], others: tuple[SequenceDrafter, ...],
                     shortest: int = 0) -> tuple[list[int], int, int] | None:
        """The tokens, and the position in them, that followed the latest occurrence of the longest known n-gram
        ending `tail` (this sequence's own first, then `others` for n >= pool_ngram_min), and n (>= `shortest`)."""
        pool_from = self.options.pool_ngram_min
        for n in range(min(self.options.ngram_max, len(tail)), max(self.options.ngram_min, shortest) - 1, -1):
            key = tuple(tail[-n:])
            follower = self._follower[n].get(key)
            if follower is not None:
                return self.tokens, follower, n
            if n >= pool_from:
                for other in others:
                    follower = other._follower[n].get(key)  # (every drafter indexes the same lengths)
                    if follower is not None:
                        return other.tokens, follower, n
        return None

    def verified(self, drafted: int, accepted: int) -> None:
        """How a draft fared (its accepted tokens already counted, one by one, in `accepted`): adapt the length
        (double the rows after a full hit of the whole length, shrink to what was accepted plus one) and pause drafting after
        repeated misses. On CPU every drafted row costs about a third of a token (gemma-3; half for SmolLM2) however
        long the draft, so a long draft pays only where it is nearly sure to hold: a run of full hits (a loop, a
        copied block, the same answer again) doubles it up to draft_max (llama.cpp's ngram-mod drafts 48-64), and
        the first miss brings it back. Past draft_start it grows only as far as runs of hits have gone: a copy
        with a renamed word every 15 tokens misses every 15 tokens, and a 30-token draft there wastes half its rows."""
        if accepted == drafted:
            self._run += accepted
            if drafted >= self.length:  # (a draft cut short by the lookup or the room left says nothing more)
                room = max(self.options.draft_start, self._typical_run, self._run)
                self.length = min(self.options.draft_max, 2 * self.length + 1, int(room))  # (twice the rows)
        else:
            self._typical_run = (self._typical_run + self._run + accepted) / 2
            self._run = 0
            self.broken += 1
            self.length = max(self.options.draft_min, accepted + 1)
        if accepted == 0:
            self._misses += 1
            self._cooldown = min(MAX_COOLDOWN, 2 ** (self._misses - 2)) if self._misses > 1 else 0  # 1, 2, 4..
        else:
            self._misses = 0


class DraftPool:
    """The sequences a draft may be copied from besides its own: the drafters of the last sequences that finished
    (at most `pool_tokens` tokens of them, newest first). The scheduler adds the ones decoding now."""

    def __init__(self, options: SpeculationOptions) -> None:
        self.options = options
        self._finished: deque[SequenceDrafter] = deque()
        self._tokens = 0

    def keep(self, drafter: SequenceDrafter) -> None:
        """A sequence finished: its tokens stay available to later drafts (the oldest kept ones make room)."""
        if not self.options.pool_tokens or len(drafter.tokens) > self.options.pool_tokens:
            return
        self._finished.appendleft(drafter)
        self._tokens += len(drafter.tokens)
        while self._tokens > self.options.pool_tokens:
            self._tokens -= len(self._finished.pop().tokens)

    def finished(self) -> tuple[SequenceDrafter, ...]:
        return tuple(self._finished)
