"""Where sequences' cells lie in one KV cache shared by all slots (`--kv-unified`), and gathering them.

Sequences that decode together get their cells interleaved (each step appends one cell per sequence). When a slot
is then cleared for a new prompt, its cells leave holes among the others', and llama.cpp places the new prompt's
tokens in the first free cells: those holes. Its attention then finds cells of its own in every block of the cache
and skips none of the other sequences' cells it has to mask out, where it skips whole blocks of them when its
cells lie together. Measured (gemma-3-270m, 2 cores, 1800-token prompt, 16 sequences of 40 + 128 tokens decoded
together before): 2.07-2.18 s on an empty cache, 3.0-3.2 s in the holes, 2.25-2.39 s with the idle sequences'
cells gathered first, which took 12-14 ms (15 sequences, 47 MB of state).

Gathering a sequence is llama.cpp's own state copy: save it, clear it, load it back, which puts it in one run of
free cells. Only idle sequences move (an active one's next step must not wait), only before a prompt long enough
for the saving to outweigh the copy (a state copy runs at a few GB/s, a prompt token costs about a millisecond of
compute on a small model, more on larger ones), and only those that share at most a short prefix with another
sequence: a prefix given to another slot is the same cells, not a copy (llama.cpp's seq_cp), and a moved sequence
takes a copy of its own. A few tokens of a chat template's opening cost nothing to copy; a long system prompt shared
by many sessions would be copied once per session, so those sequences stay where they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from backends.llamacpp.model import LlamaContext

logger = logging.getLogger(__name__)

# Prompt tokens a new sequence must still compute for its start to gather the idle sequences first: one default
# batch. Below it the copy's cost (up to ~0.1 s with a full cache of a small model) may approach the saving.
GATHER_FROM_PROMPT_TOKENS = 512
# The longest prefix a moved sequence may share with others (it gets a copy of its own of those cells)
GATHER_SHARED_TOKENS = 256


class KvLayout:
    """Tracks which sequences share cells, and gathers idle sequences' scattered cells into runs."""

    def __init__(self, context: LlamaContext) -> None:
        self.context = context
        self._shared_length: dict[int, int] = {}  # sequence -> the longest prefix it may share with another

    def shared(self, donor: int, recipient: int, length: int) -> None:
        """`recipient` was given `donor`'s first `length` positions (llama.cpp's seq_cp: the same cells, not a copy).
        (A donor stays marked until it is cleared or moved itself: another sequence may still hold its cells.)"""
        for seq_id in (donor, recipient):
            self._shared_length[seq_id] = max(self._shared_length.get(seq_id, 0), length)

    def cleared(self, seq_id: int) -> None:
        """The sequence holds no cells now, or only cells of its own."""
        self._shared_length.pop(seq_id, None)

    def gather(self, seq_ids: list[int]) -> Gathered:
        """Move each given sequence's cells into one run of free cells, one sequence at a time (only one state is
        held in memory at once), except those sharing a long prefix. Sequences llama.cpp could not load back (no
        run of free cells long enough) are empty now: their owners must forget what they held."""
        started, gathered = time.perf_counter(), Gathered()
        for seq_id in seq_ids:
            if self._shared_length.get(seq_id, 0) > GATHER_SHARED_TOKENS:
                continue
            state = self.context.sequence_state(seq_id)
            if self.context.load_sequence_state(seq_id, state):  # (clears the sequence first)
                gathered.moved += 1
                gathered.bytes += len(state)
            else:
                gathered.lost.append(seq_id)
            self.cleared(seq_id)  # (its cells are its own now, or it has none)
        gathered.seconds = time.perf_counter() - started
        if gathered.lost:
            logger.warning("Gathering the KV cache's cells: %d idle sequences did not fit back and were dropped "
                           "(their prefixes are computed again if asked for)", len(gathered.lost))
        return gathered


@dataclass
class Gathered:
    moved: int = 0
    bytes: int = 0
    seconds: float = 0.0
    lost: list[int] = field(default_factory=list)  # sequences left empty
