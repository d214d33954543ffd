"""Which idle sequences KvLayout moves: not those sharing a long prefix with another, and what it reports."""

from __future__ import annotations

from backends.llamacpp.kv_layout import GATHER_SHARED_TOKENS, KvLayout


class RecordingContext:
    """Stands in for LlamaContext's state copy: records each sequence loaded back; those in `full` do not fit."""

    def __init__(self, full: frozenset[int] = frozenset()) -> None:
        self.full, self.loaded = full, []

    def sequence_state(self, seq_id: int) -> bytearray:
        return bytearray(100 + seq_id)

    def load_sequence_state(self, seq_id: int, state: bytearray) -> bool:
        if seq_id in self.full:
            return False
        self.loaded.append(seq_id)
        return True


def test_sequences_sharing_a_long_prefix_stay_and_a_short_shared_opening_does_not_hold_one_back():
    context = RecordingContext()
    layout = KvLayout(context)
    layout.shared(donor=1, recipient=2, length=GATHER_SHARED_TOKENS + 1)  # a long system prompt: the same cells
    layout.shared(donor=3, recipient=4, length=8)  # a chat template's opening: a copy of its own costs nothing
    gathered = layout.gather([1, 2, 3, 4, 5])
    assert context.loaded == [3, 4, 5]
    assert (gathered.moved, gathered.bytes, gathered.lost) == (3, 103 + 104 + 105, [])


def test_a_cleared_sequence_moves_again_and_one_that_does_not_fit_back_is_reported_lost():
    context = RecordingContext(full=frozenset({2}))
    layout = KvLayout(context)
    layout.shared(donor=1, recipient=2, length=1000)
    layout.cleared(1)  # cleared: its cells are gone, none shared
    gathered = layout.gather([1, 2])
    assert context.loaded == [1] and gathered.lost == []  # 2 still shares: left where it is
    layout.cleared(2)
    gathered = layout.gather([2])
    assert gathered.lost == [2] and gathered.moved == 0
