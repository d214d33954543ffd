"""A step's rows rounded to whole tiles of ggml's CPU kernels (speculative_steps.py), by the step times measured so far:
drafts padded by lookup, a guess added to a busy step, drafts cut; and padding that is never held against a drafter."""

from types import SimpleNamespace

import llama_cpp
import pytest

from backends.llamacpp.row_cost import RowCost
from backends.llamacpp.sequences import Slot
from backends.llamacpp.speculation import SequenceDrafter, SpeculationOptions
from backends.llamacpp.speculative_steps import SpeculativeSteps

# One sequence's llama_decode by row count on an AVX-512 AMD EPYC (ms; gemma-3-270m, measured with
# bench_speculation_replay's step_costs): a row past a whole tile of 4 costs more than the next whole tile's rows.
MEASURED_MS = {1: 12.0, 2: 21.6, 3: 25.2, 4: 27.2, 5: 40.3, 6: 45.0, 7: 48.6, 8: 41.6, 15: 74.5, 16: 62.4}
CYCLE = [11, 12, 13, 14, 15, 16, 17]


@pytest.fixture
def batch():
    batch = llama_cpp.llama_batch_init(128, 0, 1)
    yield batch
    llama_cpp.llama_batch_free(batch)


def speculative_steps(batch, options: SpeculationOptions = SpeculationOptions(), measured=MEASURED_MS,
                      sample=lambda slot: None) -> SpeculativeSteps:
    removed = []
    context = SimpleNamespace(kv_unified=True, n_batch=128, remove_tokens=lambda seq, start: removed.append(seq))
    steps = SpeculativeSteps(context, batch, options, 4096, None, sample=sample)
    for rows, ms in measured.items():
        steps.observe_step(rows, ms / 1000)
    return steps


def decoding_slot(seq_id: int, tokens: list[int], batch, *, max_tokens: int = 256) -> Slot:
    """A slot whose sampled token is in the batch, with a drafter over `tokens` (prompt and output so far)."""
    slot = Slot(seq_id, cached_tokens=list(tokens))
    slot.job = SimpleNamespace(max_tokens=max_tokens, prompt_tokens=tokens[:1], emit=lambda delta: None)
    slot.prompt_cursor = 1
    slot.drafter = SequenceDrafter(tokens, SpeculationOptions())
    slot.batch_index = slot.add_to_batch(batch, tokens[-1], want_logits=True)
    return slot


def test_a_row_counts_step_time_is_a_moving_average_of_its_steps():
    cost = RowCost()
    assert cost.step_seconds(8) is None
    cost.observe(8, 0.040)
    cost.observe(8, 0.080)
    assert cost.step_seconds(8) == pytest.approx(0.050)  # a new step weighs a quarter
    assert cost.step_seconds(7) is None


def test_a_draft_that_spills_past_a_tile_is_continued_by_lookup_to_the_next_whole_tile(batch):
    steps = speculative_steps(batch)
    slot = decoding_slot(0, CYCLE * 4, batch)
    slot.drafter.length = 4  # 1 + 4 rows: the fifth spills (40.3 ms, where 8 rows take 41.6)
    steps.add_drafts([slot])
    assert slot.draft == CYCLE and slot.padding == 3  # the same lookup, three tokens further
    assert batch.n_tokens == 8 and slot.drafter.drafted == 4  # padding is not the drafter's guess


def test_a_draft_that_cannot_be_continued_is_cut_where_the_shorter_step_is_faster_per_expected_token(batch):
    steps = speculative_steps(batch)
    slot = decoding_slot(0, CYCLE * 4, batch, max_tokens=2)  # room for one guessed token: no padding
    slot.drafter.drafted, slot.drafter.accepted = 20, 4  # its guesses held 20 % of the time
    steps.add_drafts([slot])
    assert slot.draft == [] and batch.n_tokens == 1  # 2 rows (21.6 ms) for 1.2 tokens lose to 1 row (12.0 ms)
    assert slot.drafter.drafted == 20

    steps, batch.n_tokens = speculative_steps(batch), 0
    sure = decoding_slot(0, CYCLE * 4, batch, max_tokens=2)
    sure.drafter.drafted, sure.drafter.accepted = 20, 19
    steps.add_drafts([sure])
    assert sure.draft == [CYCLE[0]]  # 1.9 tokens for 21.6 ms beat 1 for 12.0: kept


def test_a_busy_step_one_row_short_of_a_tile_gets_a_guess_where_that_makes_the_step_cheaper(batch):
    slots = [decoding_slot(seq_id, [100 + seq_id, 200 + seq_id], batch) for seq_id in range(15)]
    speculative_steps(batch).add_drafts(slots)  # more than max_sequences: no drafts of their own
    padded = [slot for slot in slots if slot.draft]
    assert len(padded) == 1 and padded[0].draft == [padded[0].drafter.tokens[-1]] and padded[0].padding == 1
    assert batch.n_tokens == 16  # 62.4 ms where 15 rows take 74.5

    batch.n_tokens = 0
    slots = [decoding_slot(seq_id, [100 + seq_id, 200 + seq_id], batch) for seq_id in range(15)]
    speculative_steps(batch, measured={**MEASURED_MS, 16: 80.0}).add_drafts(slots)
    assert not any(slot.draft for slot in slots)  # where 16 rows cost more, a guess without a lookup is not added


def test_rounding_waits_for_the_steps_row_counts_to_have_been_timed(batch):
    slot = decoding_slot(0, CYCLE * 4, batch)
    slot.drafter.length = 4
    speculative_steps(batch, measured={}).add_drafts([slot])
    assert len(slot.draft) == 4 and slot.padding == 0


def test_accepted_padding_gives_tokens_but_only_the_drafters_own_guesses_count_for_its_length(batch):
    outputs = iter(CYCLE[1:] + CYCLE)  # the model continues the cycle: every row is accepted

    def sample(slot):
        slot.next_token = next(outputs)
        slot.completion_tokens += 1

    steps = speculative_steps(batch, sample=sample)
    slot = decoding_slot(0, CYCLE * 4, batch)
    slot.drafter.length = 4
    steps.add_drafts([slot])
    slot.next_token = CYCLE[0]  # what the step's first row gave
    slot.completion_tokens = 1
    steps.verify(slot)
    assert slot.completion_tokens == 8  # the sampled token, 4 guessed and 3 padding tokens accepted
    assert slot.drafter.accepted == 4  # (its record: 4 of 4)
    assert slot.drafter.length == 9  # a full hit of its own 4: twice the rows
    assert slot.draft == [] and slot.padding == 0 and slot.unverified == 0
