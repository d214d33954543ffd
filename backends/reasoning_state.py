"""Where a generating sequence stands with respect to its reasoning block, token by token (engine-neutral).

The engines need it to count reasoning tokens, to close the block when its budget is spent (they then write the
close marker themselves), and to keep answer-shaping (budget closing, loop breaking) out of the thinking.
"""

from __future__ import annotations

from backends.base import ReasoningControl

CLOSING_SUFFIX = "\n\n"  # written after a close marker the engine forces, as the models write it


ANSWER_RESERVE = 128  # tokens kept for a constrained answer (at most half of max_tokens), unless it needs more


def answer_room(max_tokens: int, answer_needs: int) -> int:
    """Tokens a constrained answer gets once the thinking before it is closed: at least what a valid answer
    needs (`answer_needs`, AnswerFloor.needed: markers included), so budget closing can still complete it."""
    return min(max_tokens, max(min(max_tokens // 2, ANSWER_RESERVE), answer_needs))


def reasoning_budget(control: ReasoningControl | None, max_tokens: int, answer_needs: int | None) -> int | None:
    """The request's reasoning budget; with a grammar constraining the answer (`answer_needs`: the tokens a valid
    answer needs), also small enough that the answer after the thinking still fits in max_tokens (a JSON
    answer or tool call cut off would be useless)."""
    budget = control.budget if control else None
    if control is None or answer_needs is None:
        return budget
    room = max(0, max_tokens - answer_room(max_tokens, answer_needs))
    return room if budget is None else min(budget, room)


class ReasoningTracker:
    def __init__(self, control: ReasoningControl | None, max_tokens: int = 0, answer_needs: int | None = None) -> None:
        """`answer_needs`: None when no grammar constrains the answer, else the tokens it must keep (AnswerFloor)."""
        self.control = control
        self.budget = reasoning_budget(control, max_tokens, answer_needs)
        self.inside = bool(control and control.starts_inside)
        self.decided = not control or control.starts_inside  # the start of the answer was read
        self.tokens = 0  # generated inside the block, markers included
        self._since_open = ""
        self._start = ""

    def observe(self, text: str) -> None:
        """A generated token's text (control tokens included, as their text)."""
        if self.control is None:
            return
        if not self.decided:
            self._read_start(text)
        elif self.inside:
            self.tokens += 1
            self._since_open = (self._since_open + text)[-4 * len(self.control.close):]
            if self.control.close in self._since_open:
                self.inside = False

    def _read_start(self, text: str) -> None:
        self._start += text
        start = self._start.lstrip()
        opening = self.control.open
        if start.startswith(opening):
            self.decided = self.inside = True
            self.tokens = 1  # the token that completed the open marker
            self._since_open = start[len(opening):]
            if self.control.close in self._since_open:
                self.inside = False
        elif start and not opening.startswith(start):
            self.decided = True

    @property
    def must_close(self) -> bool:
        """The block is open and its budget is spent: the engine should write the close marker now."""
        return self.inside and self.budget is not None and self.tokens >= self.budget

    def closing_text(self) -> str:
        return self.control.close + CLOSING_SUFFIX

    @property
    def shaping_answer(self) -> bool:
        """Whether tokens now belong to the answer (not the reasoning, nor a possible opening of it)."""
        return self.decided and not self.inside
