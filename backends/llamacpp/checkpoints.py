"""Prefix reuse for models with recurrent state (hybrids such as Qwen3.5, Granite 4, LFM2; pure Mamba/RWKV).

An attention KV cache can be cut back to any position, so a new prompt sharing a prefix with what a sequence holds
reuses that prefix. A recurrent layer keeps one state per sequence, the sum of everything it read: it cannot be cut
back (llama.cpp refuses a partial `seq_rm`), so without help every new turn re-evaluates its whole prompt.

Checkpoints help: while a prompt is evaluated, the scheduler stops at chosen positions and copies the sequence's
recurrent state there (llama.cpp's partial state: the recurrent layers only, small next to the KV). A later prompt
that shares a prefix with the sequence returns to the nearest checkpoint at or before the divergence (the recurrent
state from the checkpoint, the attention KV cut to the same length) and evaluates only the rest. The positions are
those later turns share: a few tokens before each prompt's end (a chat's next turn repeats the prompt up to the
assistant header, then differs where this turn's generation prompt and the history's rendering of the answer part,
e.g. a dropped `<think>` block), and every `every` tokens of a long prompt (an agent that edits a later message).
The disk prompt cache stores full states at the same tail position, so a conversation continued after a restart
is reused too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TAIL = 4  # tokens before a prompt's end where its checkpoint is taken (the next turn diverges within them)


@dataclass(frozen=True)
class Checkpoint:
    length: int  # tokens of the sequence it follows: its recurrent state right after them
    state: bytearray  # llama.cpp's partial (recurrent-only) serialisation


class SlotCheckpoints:
    """One sequence slot's checkpoints, by length, at most `limit` (each holds a copy of the recurrent state)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[Checkpoint] = []

    def add(self, checkpoint: Checkpoint) -> None:
        if self.limit <= 0:
            return
        # (a new list each time: the event loop reads `items` for its hints while the scheduler thread writes)
        items = sorted([c for c in self.items if c.length != checkpoint.length] + [checkpoint], key=lambda c: c.length)
        while len(items) > self.limit:
            items.pop(self._least_useful(items))
        self.items = items

    @staticmethod
    def _least_useful(items: list[Checkpoint]) -> int:
        """The checkpoint nearest the one before it (it saves least over that one), never the newest: the newest
        is what the conversation's next turn returns to."""
        if len(items) <= 2:
            return 0
        return min((items[i].length - items[i - 1].length, i) for i in range(1, len(items) - 1))[1]

    def best(self, length: int) -> Checkpoint | None:
        """The longest checkpoint covering at most `length` tokens."""
        return next((c for c in reversed(self.items) if c.length <= length), None)

    def keep_within(self, length: int) -> None:
        """Forget checkpoints past `length`: the sequence now differs there."""
        self.items = [c for c in self.items if c.length <= length]

    def replace_with(self, checkpoints: Iterable[Checkpoint]) -> None:
        self.items = []
        for checkpoint in checkpoints:
            self.add(checkpoint)


def checkpoint_points(prompt_length: int, evaluated_from: int, every: int, inside_media) -> list[int]:
    """Where to stop while evaluating a prompt from `evaluated_from` to take checkpoints: `TAIL` tokens before its
    end and every `every` tokens (0: only the tail), never inside an image (`inside_media(position)`)."""
    points = set(range(every * (evaluated_from // every + 1), prompt_length - TAIL, every)) if every > 0 else set()
    if prompt_length - TAIL > evaluated_from:
        points.add(prompt_length - TAIL)
    return sorted(point for point in points if point > evaluated_from and not inside_media(point))


class StateCheckpoints:
    """The checkpoints of every sequence of a context whose model has recurrent state (used by the scheduler
    thread; `restorable` is also read from the event loop as a hint)."""

    def __init__(self, context, n_slots: int, limit: int, every: int) -> None:
        self.context = context
        self.every = every
        self.slots = [SlotCheckpoints(limit) for _ in range(n_slots)]

    def restorable(self, seq_id: int, held: int, length: int) -> int:
        """How much of a shared prefix of `length` tokens a sequence holding `held` tokens can return to: all of
        it at its own end, else its longest checkpoint within it (0: none)."""
        if length >= held:
            return length
        checkpoint = self.slots[seq_id].best(length)
        return checkpoint.length if checkpoint else 0

    def return_to(self, seq_id: int, held: int, length: int, position: int) -> bool:
        """Cut a sequence back to `length` tokens, whose next position is `position` (a length `restorable`
        gave); False if llama.cpp refused."""
        if length < held:
            checkpoint = self.slots[seq_id].best(length)
            if checkpoint is None or checkpoint.length != length:
                return False
            return self.context.restore_checkpoint(seq_id, checkpoint.state, position)
        return self.context.remove_tokens(seq_id, position)

    def share(self, donor_seq: int, donor_held: int, seq_id: int, length: int, position: int) -> bool:
        """After the attention KV of a donor's first `length` tokens was copied into `seq_id`: its recurrent state
        there too (the donor's checkpoint, unless `length` is the donor's end and the copy took its state)."""
        donor = self.slots[donor_seq]
        self.slots[seq_id].replace_with(c for c in donor.items if c.length <= length)
        return self.return_to(seq_id, donor_held, length, position)

    def take(self, seq_id: int, length: int) -> None:
        """The sequence holds exactly `length` tokens now: keep a copy of its recurrent state."""
        self.slots[seq_id].add(Checkpoint(length, self.context.checkpoint_state(seq_id)))

    def keep_within(self, seq_id: int, length: int) -> None:
        self.slots[seq_id].keep_within(length)

    def points(self, prompt_length: int, evaluated_from: int, inside_media) -> list[int]:
        return checkpoint_points(prompt_length, evaluated_from, self.every, inside_media)
