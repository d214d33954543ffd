"""Steering a generated answer: closing a reasoning block whose budget is spent, and, for a grammar-constrained
answer, budget-aware closing and loop breaking. Engine-neutral: both engines steer the same way, each through
its own `SteeringVocabulary` (llama.cpp's model; a Hugging Face tokenizer's byte table).

The engine closes a thinking model's reasoning block itself (writes the close marker) once the request's
reasoning budget is spent, or, when a grammar constrains the answer that follows, early enough to leave that
answer its closing window. The answer-shaping below never touches the reasoning.

Budget closing and loop breaking favour the same tokens, the ones that only close JSON (`"`, `]`, `}` and their merges) and the end of the
answer, over the model's own pick, in two situations:
- budget closing: in the last tokens of `max_tokens`, with a bonus that grows as the budget runs out, so a cut
  answer is still valid JSON (then finish_reason is `length`: the budget made it end);
- loop breaking: once the answer repeats itself (see backends/json_loops.py), where the model would start one
  more element of the looping container (then finish_reason stays `stop`: the JSON ended where it was complete).
Calls with XML-like parameters (qwen-xml, glm: chat/xml_arguments.py) are closed by their tags instead, the model
led along the closing text one token at a time.
Lazy grammars (tool_choice auto) are left alone: whether their grammar is active yet is not known here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from weakref import WeakKeyDictionary

import numpy as np

from backends.base import GrammarSpec, ReasoningControl
from backends.engine_support import AnswerFloor
from backends.json_loops import JsonDepth, LoopWatch
from backends.reasoning_state import ReasoningTracker

CLOSING_BONUS = 4.0  # logits added per token of the closing window already used
LOOP_BONUS = 100.0  # a loop is closed wherever the grammar lets it: the model's preference to go on is strong


Boost = tuple[np.ndarray, float]  # token ids, logit added to each


class SteeringVocabulary(Protocol):
    """What steering needs to know of a model's tokens."""

    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the answer (control tokens: none)."""

    def token_text(self, token: int) -> bytes:
        """A token's text, control tokens spelled out (how a reasoning marker is seen)."""

    def closing_tokens(self) -> np.ndarray:
        """Token ids that only close JSON (`only_closes`) and the end-of-generation tokens."""

    def tokenize_markup(self, text: str) -> list[int]:
        """Tokens of text that may spell control tokens (a reasoning block's close marker)."""


def only_closes(piece: bytes) -> bool:
    """Whether a token's bytes only close JSON: `"`, `]`, `}` and merges of them, whitespace aside."""
    text = piece.strip()
    return bool(text) and all(byte in b'"]}' for byte in text)


@dataclass(frozen=True)
class Closers:
    """A vocabulary's closing tokens by where they close: inside a string only a quote does (a `]` there is
    one more character of it), outside one only brackets do. Both hold the end-of-generation tokens."""

    in_string: np.ndarray
    outside: np.ndarray


_closers: WeakKeyDictionary = WeakKeyDictionary()  # per vocabulary (a model), worked out once


def closers_of(vocabulary: SteeringVocabulary) -> Closers:
    closers = _closers.get(vocabulary)
    if closers is None:
        in_string, outside = [], []
        for token in vocabulary.closing_tokens().tolist():
            text = vocabulary.piece(token).strip()
            if not text or text.startswith(b'"'):
                in_string.append(token)
            if not text or b'"' not in text:
                outside.append(token)
        closers = _closers[vocabulary] = Closers(np.array(in_string, dtype=np.int64),
                                                 np.array(outside, dtype=np.int64))
    return closers


def closing_window(max_tokens: int, shortest_answer: int = 0) -> int:
    """How many of a constrained answer's last budget tokens may be spent closing it: enough for closing quotes
    and brackets, missing required keys and a tool call's end marker; never more than half the budget, unless the
    shortest valid answer needs that much (then closing starts as early as its room allows)."""
    usual = min(max_tokens // 2, max(32, min(64, max_tokens // 8)))
    return min(max_tokens, max(usual, shortest_answer))


@dataclass(frozen=True)
class SteeringOptions:
    budget_closing: bool = True
    loop_breaking: bool = True


DEFAULT_STEERING = SteeringOptions()


class Steering:
    """One sequence's steering: `boost_for` the model's pick before it is taken, `observe` each token taken,
    `forced_tokens` to write instead of sampling (the close of a reasoning block)."""

    def __init__(self, vocabulary: SteeringVocabulary, grammar: GrammarSpec | None, max_tokens: int,
                 options: SteeringOptions, reasoning: ReasoningControl | None = None, floor: AnswerFloor | None = None):
        """`floor`: what the grammar-constrained answer takes at least (None: not known, or not constrained from
        its start, e.g. a lazy grammar)."""
        active = grammar is not None and not grammar.lazy_triggers
        self.vocabulary = vocabulary
        self.max_tokens = max_tokens
        self.window = closing_window(max_tokens, floor.shortest if floor else 0)
        self.budget_closing = active and options.budget_closing
        self.loops = LoopWatch() if active and options.loop_breaking else None
        self.json = JsonDepth()  # of the answer: whether a quote or a bracket closes next
        self.tags = grammar.tag_closing if active else None  # XML-like calls: closed by their tags instead
        self.answer = bytearray()  # the answer so far, where its tags are read (XML-like calls only)
        self.reasoning = ReasoningTracker(reasoning, max_tokens, (floor.needed if floor else 0) if active else None)
        self.reason: str | None = None  # why the last boost was given: "budget" or "loop"
        self.closed_by_budget = False  # budget closing changed a pick: the answer ends with finish_reason length
        self.loop_breaks = 0  # picks loop breaking changed

    def boost_for(self, pick: int, completion_tokens: int) -> Boost | None:
        """Extra logits for closing tokens at this step, given the model's unsteered pick (None: no steering)."""
        self.reason = None
        if not self.reasoning.shaping_answer:
            return None
        amount = 0.0
        if self.budget_closing:
            remaining = self.max_tokens - completion_tokens
            if remaining <= self.window:
                amount, self.reason = CLOSING_BONUS * (1 + (self.window - remaining)), "budget"
        if self.loops is not None and self.loops.should_close(self.vocabulary.piece(pick)):
            amount, self.reason = max(amount, LOOP_BONUS), "loop"
        if self.reason is None:
            return None
        closers = closers_of(self.vocabulary)
        if self.tags is not None:
            return self._toward_closing_tags(closers), amount
        return (closers.in_string if self.json.in_string else closers.outside), amount

    def _toward_closing_tags(self, closers: Closers) -> np.ndarray:
        """The next token of the text that closes an XML-like call from here (closing the value the answer is in,
        the function, the call), or the end of the answer once it is closed. One token at a time, re-read from the
        answer each step: a model that strays (writes `</function>` inside a value) is led back from where it is."""
        remaining = self.tags.remaining(self.answer.decode("utf-8", errors="replace"))
        if not remaining:
            return closers.outside  # (the end-of-generation tokens; the grammar refuses the brackets here)
        return np.array(self.vocabulary.tokenize_markup(remaining)[:1], dtype=np.int64)

    def observe(self, token: int, steered: bool) -> None:
        """Record the token taken, and whether steering changed it from the model's own pick."""
        self.closed_by_budget |= steered and self.reason == "budget"
        self.loop_breaks += steered and self.reason == "loop"
        answering = self.reasoning.shaping_answer
        if self.reasoning.control is not None:
            self.reasoning.observe(self.vocabulary.token_text(token).decode("utf-8", errors="replace"))
        if answering and (self.budget_closing or self.loops is not None):
            piece = self.vocabulary.piece(token)
            self.json.feed(piece)
            if self.tags is not None:
                self.answer += piece
            if self.loops is not None:
                self.loops.observe(token, piece)

    def forced_tokens(self) -> list[int]:
        """Tokens the engine writes next without sampling: the close of a reasoning block whose budget is spent."""
        if not self.reasoning.must_close:
            return []
        return self.vocabulary.tokenize_markup(self.reasoning.closing_text())
