"""Well-formed UTF-8 across token boundaries (Unicode's table 3-7), byte by byte.

Byte tokens can spell any byte sequence; a grammar engine that checks UTF-8 loosely lets some ill-formed ones
through (xgrammar accepts the surrogates, ED A0..BF), and each of their bytes then decodes to a U+FFFD. Python's
incremental decoder cannot say early either: it holds an incomplete sequence back and judges it only once whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

CONTINUATION = (0x80, 0xBF)
# Lead byte -> (the range its first continuation byte must fall in, continuation bytes in all).
LEADS: dict[int, tuple[tuple[int, int], int]] = {
    **{lead: (CONTINUATION, 1) for lead in range(0xC2, 0xE0)},
    0xE0: ((0xA0, 0xBF), 2),  # no overlong forms
    **{lead: (CONTINUATION, 2) for lead in range(0xE1, 0xED)},
    0xED: ((0x80, 0x9F), 2),  # no surrogates (U+D800..DFFF)
    0xEE: (CONTINUATION, 2),
    0xEF: (CONTINUATION, 2),
    0xF0: ((0x90, 0xBF), 3),  # no overlong forms
    0xF1: (CONTINUATION, 3),
    0xF2: (CONTINUATION, 3),
    0xF3: (CONTINUATION, 3),
    0xF4: ((0x80, 0x8F), 3),  # nothing past U+10FFFF
}


@dataclass
class Utf8Validity:
    """Where a byte stream stands: how many continuation bytes it still owes, and the range of the next one."""

    owed: int = 0
    next_range: tuple[int, int] = CONTINUATION

    def accepts(self, data: bytes) -> bool:
        """Whether the stream stays well-formed (or completable) with `data` appended; changes nothing."""
        return Utf8Validity(self.owed, self.next_range).feed(data)

    def feed(self, data: bytes) -> bool:
        """Append `data`; False (the state then undefined) where it makes the stream ill-formed."""
        for byte in data:
            if self.owed:
                low, high = self.next_range
                if not low <= byte <= high:
                    return False
                self.owed -= 1
                self.next_range = CONTINUATION
            elif byte >= 0x80:
                if byte not in LEADS:
                    return False
                self.next_range, self.owed = LEADS[byte]
        return True

    def reset(self) -> None:
        self.owed, self.next_range = 0, CONTINUATION


class Utf8Table:
    """Which tokens of a vocabulary would break a stream's UTF-8, for every token at once (to forbid them all
    where a pick broke it: forbidding one token at a time could take many picks)."""

    def __init__(self, token_bytes: Iterable[bytes]) -> None:
        lead, alone = [], []
        self.continuing: dict[int, bytes] = {}  # tokens that start with a continuation byte, and their bytes
        for token, raw in enumerate(token_bytes):
            lead.append(raw[0] if raw else -1)
            alone.append(not Utf8Validity().feed(raw))
            if raw and CONTINUATION[0] <= raw[0] <= CONTINUATION[1]:
                self.continuing[token] = raw
        self.lead = np.array(lead, dtype=np.int16)
        self.ill_formed_alone = np.array(alone, dtype=bool)

    def ill_formed_after(self, state: Utf8Validity) -> np.ndarray:
        """A mask of the tokens that break the UTF-8 of a stream standing at `state`."""
        if not state.owed:
            return self.ill_formed_alone.copy()
        low, high = state.next_range
        fitting = (self.lead >= low) & (self.lead <= high)
        broken = ~fitting & (self.lead >= 0)  # (a token of no bytes, a control token, breaks nothing)
        for token in np.flatnonzero(fitting).tolist():  # continuation bytes lead: a few dozen tokens
            broken[token] = not state.accepts(self.continuing[token])
        return broken
