"""Repetition loops inside grammar-constrained JSON, and where to break them.

Small models asked for a list or an object keep adding the same element (`"Bosch", "Bosch", ...`) or the same
key until `max_tokens`: the grammar keeps every token valid but never makes the answer end. Measured on the
structured-output corpus (bench/bench_structured.py), every answer of the instruct model that did not end on its
own was such a loop. A sampling penalty does not help (tried llama.cpp's DRY sampler: no change), because the
model's preference for the next separator is far stronger than for closing the container.

`LoopWatch` sees each generated token and its text. Once the recent tokens repeat with a period (an element or
key that came back at least twice), it marks the JSON container the loop runs in; from then on, where the model
would write the `,` that starts another element of that container, the engine favours tokens that close it
instead (and, for a loop with no element boundary at all, like one character repeating inside a string, it
favours closing right away). The answer then ends with valid JSON and finish_reason `stop`, a few elements
after the loop began, instead of being cut by the budget. Engine-neutral: tokens are ids, text is bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PERIOD = 64  # longest repeated block (tokens) looked for: a small object with a few keys, or a whole tool call
MIN_LOOP_TOKENS = 12  # a repetition shorter than this is not a loop: `[0, 0, 0]` or "aaa" are fine
STUCK_TOKENS = 24  # tokens (or two periods) a loop may run without an element boundary before it is closed anyway


@dataclass
class JsonDepth:
    """Nesting depth of JSON text read so far, counting brackets outside strings only."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def feed(self, text: bytes) -> list[int]:
        """Advance over `text`; returns the depth at each `,` met outside a string."""
        commas = []
        for byte in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:  # closing quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in b"[{":
                self.depth += 1
            elif byte in b"]}":
                self.depth = max(0, self.depth - 1)
            elif byte == 0x2C:
                commas.append(self.depth)
        return commas

    def copy(self) -> JsonDepth:
        return JsonDepth(self.depth, self.in_string, self.escaped)


@dataclass
class LoopWatch:
    """Per sequence: detects a repetition loop in the generated tokens and says when to steer towards closing."""

    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)  # JSON depth after each token
    runs: list[int] = field(default_factory=lambda: [0] * (MAX_PERIOD + 1))  # trailing matches at each period
    json: JsonDepth = field(default_factory=JsonDepth)
    loop_depth: int | None = None  # depth of the container a detected loop runs in
    loop_period: int = 0  # tokens per repetition of that loop
    since_boundary: int = 0  # tokens since the loop started or last reached an element boundary
    loops_found: int = 0
    value_text: bytearray = field(default_factory=bytearray)  # the top-level value being written
    values_seen: set[bytes] = field(default_factory=set)  # top-level values (tool calls) already complete

    def observe(self, token: int, text: bytes) -> None:
        """Record a generated token and the bytes it added to the answer."""
        self.tokens.append(token)
        for period in range(1, min(MAX_PERIOD, len(self.tokens) - 1) + 1):
            self.runs[period] = self.runs[period] + 1 if token == self.tokens[-1 - period] else 0
        depth_before = self.json.depth
        at_boundary = self._boundary_in(self.json, text)
        self.depths.append(self.json.depth)
        if self.loop_depth is None:
            self._detect()
            if max(depth_before, self.json.depth) > 0:
                self._track_top_level_value(text)
        elif self.json.depth < self.loop_depth:  # the looping container is closed: watch for the next loop
            self.loop_depth = None
        else:
            self.since_boundary = 0 if at_boundary else self.since_boundary + 1

    def _detect(self) -> None:
        for period in range(1, MAX_PERIOD + 1):
            run = self.runs[period]
            if run >= period and run + period >= MIN_LOOP_TOKENS:
                self.loop_depth = min(self.depths[-(run + period):])
                self.loop_period = period
                self.since_boundary = 0
                self.loops_found += 1
                return

    def _track_top_level_value(self, text: bytes) -> None:
        """A top-level value (a whole tool call) identical to an earlier one is a loop: the model is repeating
        the call it made, and would again."""
        self.value_text += text
        if self.json.depth == 0:
            value = bytes(self.value_text).strip()
            self.value_text.clear()
            if value in self.values_seen:
                self.loop_depth, self.loop_period, self.since_boundary = 0, len(value), 0
                self.loops_found += 1
            self.values_seen.add(value)

    def should_close(self, pick_text: bytes) -> bool:
        """Whether the engine should favour closing tokens over `pick_text`, the model's own next token."""
        if self.loop_depth is None:
            return False
        if self.since_boundary >= max(STUCK_TOKENS, 2 * self.loop_period):
            return True
        return self._boundary_in(self.json.copy(), pick_text)

    def _boundary_in(self, state: JsonDepth, text: bytes) -> bool:
        """Advance `state` over `text`; whether that reaches an element boundary of the looping container: a
        comma in it, or, for a loop of whole top-level values (the same tool call again), the space between them."""
        commas = state.feed(text)
        if self.loop_depth == 0:
            return state.depth == 0 and not state.in_string
        return self.loop_depth is not None and self.loop_depth in commas
