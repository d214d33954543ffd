"""A Hugging Face tokenizer's tokens as bytes, for what reads the answer token by token: steering (budget
closing, loop breaking, the close of a reasoning block) and the grammar's UTF-8 check.

xgrammar already builds the table of what each token decodes to (byte-level BPE and SentencePiece with byte
fallback alike) for its masks; the same table serves here, so both agree on every token's bytes.
"""

from __future__ import annotations

import functools

import numpy as np
import xgrammar

from backends.answer_steering import only_closes
from backends.utf8_validity import Utf8Table


class TokenizerVocabulary:
    """One model's tokens: their bytes, its control tokens and end-of-generation tokens (a `SteeringVocabulary`)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.token_bytes = [bytes(raw) for raw in self.info.decoded_vocab]
        self._control = frozenset(tokenizer.all_special_ids)
        # One pass over the vocabulary at load (a fraction of a second for 262k tokens), not on the request path.
        self._closing = np.array([token for token, raw in enumerate(self.token_bytes) if token in eos_ids
                                  or (token not in self._control and only_closes(raw))], dtype=np.int64)

    @functools.cached_property
    def utf8_table(self) -> Utf8Table:
        return Utf8Table(self.token_bytes)  # built where a pick first breaks UTF-8 (rare: most runs never)

    def piece(self, token: int) -> bytes:
        return b"" if token in self._control else self.token_text(token)

    def token_text(self, token: int) -> bytes:
        return self.token_bytes[token] if 0 <= token < len(self.token_bytes) else b""

    def closing_tokens(self) -> np.ndarray:
        return self._closing

    def tokenize_markup(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)
