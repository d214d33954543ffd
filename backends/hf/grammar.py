"""Grammar-constrained decoding for the transformers engine with xgrammar.

The same GBNF the llama.cpp engine enforces (built by `chat/grammars.py` from JSON schemas and tool
definitions) is compiled by xgrammar, which parses llama.cpp-style GBNF, precomputes token masks for a Hugging
Face tokenizer and applies them to a logits row on CPU or GPU. Chosen over outlines / lm-format-enforcer
because it takes our existing GBNF unchanged (one grammar source for both engines) and masks a 262k-token
vocabulary in microseconds. Lazy grammars (tool_choice auto) are handled here: the sequence is free until a
trigger regex matches the text generated so far, then the matcher is fed the text from the trigger on.

xgrammar checks UTF-8 byte by byte but lets surrogate code points through (ED A0..BF: not UTF-8), which a
model's byte tokens can spell; decoded, each of those bytes is a U+FFFD, so a string under `maxLength` would come
out longer. A constrained sequence therefore also keeps its bytes well-formed UTF-8 (`keeps_utf8`).
"""

from __future__ import annotations

import functools
import logging
import re

import torch
import xgrammar

from backends.base import GrammarSpec
from backends.hf.vocabulary import TokenizerVocabulary
from backends.utf8_validity import Utf8Validity
from errors import InvalidRequest

logger = logging.getLogger(__name__)


class GrammarCompiler:
    """Compiles GBNF for one tokenizer (cached: agents send the same tools again and again)."""

    def __init__(self, vocabulary: TokenizerVocabulary) -> None:
        self._compiler = xgrammar.GrammarCompiler(vocabulary.info)
        self.vocabulary = vocabulary
        self.compile = functools.lru_cache(maxsize=64)(self._compile)

    def _compile(self, gbnf: str):
        try:
            return self._compiler.compile_grammar(xgrammar.Grammar.from_ebnf(gbnf, root_rule_name="root"))
        except Exception as exc:
            raise InvalidRequest(f"The grammar does not parse as GBNF: {exc}", param="grammar") from None


class GrammarConstraint:
    """One sequence's grammar state."""

    def __init__(self, compiled, spec: GrammarSpec, vocabulary: TokenizerVocabulary) -> None:
        self._compiled = compiled
        self.spec = spec
        self._vocabulary = vocabulary
        self._triggers = [re.compile(pattern) for pattern in spec.lazy_triggers]
        self._matcher = None if self._triggers else xgrammar.GrammarMatcher(compiled)
        self._text = ""  # generated text while waiting for a trigger
        self._bitmask = xgrammar.allocate_token_bitmask(1, len(vocabulary.token_bytes))
        self._utf8 = Utf8Validity()  # of the constrained bytes so far

    def mask(self, logits: torch.Tensor) -> None:
        """Forbid, in place, every token the grammar does not allow next (nothing while lazy and untriggered)."""
        if self._matcher is None or self._matcher.is_terminated():
            return
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgrammar.apply_token_bitmask_inplace(logits.view(1, -1), self._bitmask.to(logits.device))

    def keeps_utf8(self, token: int) -> bool:
        """Whether `token` leaves the constrained bytes valid UTF-8 (complete or still completable)."""
        if self._matcher is None or self._matcher.is_terminated():
            return True
        return self._utf8.accepts(self._vocabulary.token_bytes[token])

    def mask_ill_formed(self, logits: torch.Tensor) -> None:
        """Forbid, in place, every token that would break the UTF-8 (where a pick did)."""
        broken = self._vocabulary.utf8_table.ill_formed_after(self._utf8)
        logits[torch.from_numpy(broken)] = float("-inf")

    def accept(self, token: int, text: str) -> None:
        """Advance past the sampled token (`text`: what it added to the output, for trigger matching)."""
        if self._matcher is not None:
            if self._matcher.is_terminated():
                return
            if not self._matcher.accept_token(token):
                logger.warning("Grammar rejected token %d; the sequence continues unconstrained", token)
                self._matcher = None
                self._triggers = []
                return
            if not self._utf8.feed(self._vocabulary.token_bytes[token]):
                self._utf8.reset()  # (only a token written without sampling gets here)
            return
        if not self._triggers:
            return
        self._text += text
        for pattern in self._triggers:
            match = pattern.fullmatch(self._text)
            if match:
                matcher = xgrammar.GrammarMatcher(self._compiled)
                if matcher.accept_string(self._text[match.start(1) :]):
                    self._matcher = matcher
                self._triggers = []  # triggered once: constrained from here, or (if it failed) never
                return
