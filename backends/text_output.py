"""Engine-independent text assembly: token bytes -> UTF-8 text, and stop-string detection.

Both work on a stream, so every engine can emit text token by token without ever splitting a UTF-8
character or leaking the beginning of a stop string to the client.
"""

import codecs
from collections.abc import Callable


class IncrementalDetokenizer:
    """Turns token byte pieces into text, holding back incomplete UTF-8 sequences until they complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopStringFilter:
    """Cuts generated text at the first stop string.

    Text that could still turn into a stop string is held back; everything before it is released.
    """

    def __init__(self, stop_strings: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stop_strings if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def push(self, text: str) -> str:
        """Return the text that is safe to emit now. After a stop string is found, returns '' forever."""
        if self.stopped or not text:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        found = self._first_stop(buffer)
        if found is not None:
            cut, self.matched = found
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._longest_partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Release held-back text at the end of generation (it never became a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _first_stop(self, buffer: str) -> tuple[int, str] | None:
        """(where, which) of the stop string that occurs first (the first listed, on a tie), if any."""
        hits = [(i, stop) for stop in self._stops if (i := buffer.find(stop)) >= 0]
        return min(hits, key=lambda hit: hit[0]) if hits else None

    def _longest_partial_suffix(self, buffer: str) -> int:
        """Length of the longest buffer suffix that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best


class TokenTextDecoder:
    """Token ids -> text increments for tokenizers that only decode whole id sequences (Hugging Face).

    Decodes a short window of recent ids and emits only what it adds to the window's text, so a UTF-8
    character spread over several tokens, or a word whose spacing depends on its neighbours, comes out whole
    (the same technique as vLLM's and TGI's incremental detokenisers)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the window
        self._read = 0  # ids before this are already emitted

    def push(self, token: int) -> str:
        self._ids.append(token)
        emitted = self._decode(self._ids[self._prefix : self._read])
        current = self._decode(self._ids[self._prefix :])
        if len(current) <= len(emitted) or current.endswith("\ufffd"):
            return ""  # an incomplete character: wait for its remaining bytes
        self._prefix, self._read = self._read, len(self._ids)
        return current[len(emitted) :]

    def flush(self) -> str:
        emitted = self._decode(self._ids[self._prefix : self._read])
        current = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return current[len(emitted) :]
