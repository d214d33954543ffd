"""The prompt-lookup drafter: what it proposes from a sequence's own tokens, and how it backs off."""

from backends.llamacpp.speculation import DraftPool, SequenceDrafter, SpeculationOptions

OPTIONS = SpeculationOptions(draft_max=4, draft_min=1, ngram_max=3, ngram_min=2)


def test_the_latest_earlier_occurrence_of_the_last_tokens_gives_what_followed_it():
    drafter = SequenceDrafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8], OPTIONS)
    for token in (1, 2, 3):
        drafter.push(token)
    assert drafter.propose(4) == [7, 8, 1, 2]  # "1 2 3" last seen before 7 8, not before 4 5
    assert drafter.propose(2) == [7, 8]  # never longer than the room given


def test_longer_matches_win_and_unknown_tails_propose_nothing():
    drafter = SequenceDrafter([5, 6, 7, 1, 6, 7, 2], OPTIONS)
    drafter.push(5)
    drafter.push(6)
    drafter.push(7)
    assert drafter.propose(1) == [1]  # "5 6 7" beats the later "6 7 -> 2"
    drafter.push(42)
    drafter.push(43)
    assert drafter.propose(4) == []


def test_the_draft_length_adapts_and_repeated_misses_pause_drafting():
    drafter = SequenceDrafter([1, 2, 3] * 10, SpeculationOptions(draft_max=8, ngram_min=2, ngram_max=2))
    assert len(drafter.propose(8)) == 8
    drafter.verified(drafted=8, accepted=2)
    assert drafter.length == 3  # what was accepted, plus one
    drafter.verified(drafted=3, accepted=3)
    assert drafter.length == 7  # a full hit: twice the rows (the token and the draft)
    drafter.verified(drafted=2, accepted=2)
    assert drafter.length == 7  # a full hit of a draft cut short (the lookup ran out): says nothing more
    drafter.verified(drafted=7, accepted=7)
    assert drafter.length == 8  # (never past draft_max)
    drafter.verified(drafted=5, accepted=0)
    assert drafter.propose(8)  # one miss: keeps drafting
    drafter.verified(drafted=1, accepted=0)
    assert drafter.propose(8) == []  # two in a row: pauses (one step, then two, four, ...)
    assert drafter.propose(8)
    assert drafter.drafted == 8 + 1 + 1  # what was proposed (acceptance is counted by the scheduler)


POOLED = SpeculationOptions(draft_max=8, ngram_min=2, ngram_max=4, pool_ngram_min=3, pool_tokens=20)


def test_a_draft_comes_from_another_sequence_when_it_matches_longer():
    earlier = SequenceDrafter([9, 1, 2, 3, 4, 5, 6, 7, 8], POOLED)  # e.g. the same request answered a moment ago
    drafter = SequenceDrafter([2, 3, 30, 31, 1, 2, 3], POOLED)  # its own tokens hold "2 3" before, not "1 2 3"
    assert drafter.lookup(2) == [30, 31]  # alone: its own 2-token match
    assert drafter.lookup(4, (earlier,)) == [4, 5, 6, 7]  # the 3-token match in the other sequence wins


def test_the_own_sequence_wins_a_tie_and_short_matches_elsewhere_are_ignored():
    other = SequenceDrafter([1, 2, 3, 50, 51, 52], POOLED)
    drafter = SequenceDrafter([1, 2, 3, 60, 61, 62, 1, 2, 3], POOLED)
    assert drafter.lookup(3, (other,)) == [60, 61, 62]  # same length (3): its own, the nearer context
    short = SequenceDrafter([7, 8, 70, 71, 72, 73], POOLED)
    drafter = SequenceDrafter([5, 7, 8], POOLED)
    assert drafter.lookup(3, (short,)) == []  # 2 tokens matched elsewhere: below pool_ngram_min


def test_the_pool_keeps_the_newest_finished_sequences_within_its_token_budget():
    pool = DraftPool(POOLED)
    first, second, third = (SequenceDrafter(list(range(start, start + 9)), POOLED) for start in (0, 100, 200))
    for drafter in (first, second, third):
        pool.keep(drafter)
    assert pool.finished() == (third, second)  # 27 tokens > 20: the oldest went
    pool.keep(SequenceDrafter(list(range(21)), POOLED))  # larger than the whole budget: not kept
    assert pool.finished() == (third, second)


def test_drafts_grow_past_their_start_only_as_far_as_runs_of_hits_have_gone():
    drafter = SequenceDrafter([1, 2, 3] * 10, SpeculationOptions(draft_max=64, draft_start=4))
    for _ in range(3):  # a copy with a renamed word every 6 tokens: each draft holds 5, then misses
        drafter.verified(drafted=4, accepted=4)
        drafter.verified(drafted=drafter.length, accepted=1)
    assert drafter._typical_run < 6
    drafter.verified(drafted=drafter.length, accepted=drafter.length)
    drafter.verified(drafted=drafter.length, accepted=drafter.length)
    assert drafter.length <= 8  # not 64: runs here end after ~5 tokens
    for _ in range(6):  # a loop: everything holds
        drafter.verified(drafted=drafter.length, accepted=drafter.length)
    assert drafter.length == 64


def test_a_busy_step_drafts_only_from_long_matches():
    drafter = SequenceDrafter([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3], SpeculationOptions(ngram_max=8, ngram_min=2))
    assert drafter.lookup(4) == [4, 5, 6, 7]  # a 3-token match is enough in a quiet step
    assert drafter.lookup(4, shortest=6) == []  # not in a busy one
    for token in (4, 5, 6):
        drafter.push(token)
    assert drafter.lookup(2, shortest=6) == [7, 8]  # "1 2 3 4 5 6" again: six tokens matched


def test_in_busy_steps_a_sequence_probes_briefly_then_drafts_only_as_far_as_its_guesses_pay():
    options = SpeculationOptions(busy_evidence=8, busy_probe=4, busy_row_cost=0.75, busy_draft_max=7)
    holding, failing, mostly = (SequenceDrafter([], options) for _ in range(3))
    assert holding.busy_budget(16) == 4  # no record yet: a short probe
    holding.drafted, holding.accepted = 8, 8
    assert holding.busy_budget(16) == 7  # its guesses all held: the busy cap (not its 15 of a quiet step)
    failing.drafted, failing.accepted, failing.broken = 8, 3, 2  # a guess holds 3 times in 5: less than a row costs
    assert failing.busy_budget(16) == 0  # no drafts while steps are busy
    assert failing.budget(16) == 15  # (a quiet step still lets it try)
    mostly.drafted, mostly.accepted, mostly.broken = 40, 38, 2  # holds 95 %: 0.95^5 = 0.77 >= 0.75 > 0.95^6
    assert mostly.busy_budget(16) == 5
    assert mostly.busy_budget(16, row_cost=0.9) == 2  # a dearer row: 0.95^2 = 0.90 > 0.9 > 0.95^3
    assert mostly.busy_budget(3) == 3  # (within what the sequence has room for)


def test_a_miss_counts_as_a_broken_draft():
    drafter = SequenceDrafter([], SpeculationOptions())
    drafter.verified(4, 4)
    assert drafter.broken == 0
    drafter.verified(4, 2)
    drafter.verified(4, 0)
    assert drafter.broken == 2


def _steps_with_three_decoding_sequences(kv_unified: bool):
    """SpeculativeSteps over a stand-in context and three decoding slots, each with a drafter that has held."""
    from types import SimpleNamespace

    from backends.llamacpp.speculative_steps import SpeculativeSteps

    steps = SpeculativeSteps(SimpleNamespace(kv_unified=kv_unified), None, SpeculationOptions(), 4096, None,
                             sample=lambda slot: None)
    slots = []
    for seq_id in range(3):
        drafter = SequenceDrafter(list(range(10)) * 3, SpeculationOptions())
        drafter.drafted, drafter.accepted = 8, 8
        slots.append(SimpleNamespace(seq_id=seq_id, batch_index=seq_id, drafter=drafter, forced=False, draft=[],
                                     job=SimpleNamespace(max_tokens=64), completion_tokens=0, cached_tokens=[0] * 30,
                                     prefilling=False,
                                     add_to_batch=lambda batch, token, want_logits: 0))
    steps.add_drafts(slots)
    return slots


def test_busy_steps_check_drafts_only_in_a_shared_kv_cache():
    assert all(slot.draft for slot in _steps_with_three_decoding_sequences(kv_unified=True))
    # one KV stream per slot: a longer sequence would be decoded in a pass of its own
    assert not any(slot.draft for slot in _steps_with_three_decoding_sequences(kv_unified=False))


def test_a_rows_cost_is_read_off_the_steps_timed_so_far():
    from backends.llamacpp.row_cost import RowCost

    cost = RowCost(min_steps=16, refit_every=1)
    for _ in range(15):
        cost.observe(8, 0.080)
    assert cost.of_a_token(8) is None  # too few steps
    cost.observe(8, 0.080)
    assert cost.of_a_token(8) is None  # every step had 8 rows: no slope to read
    cost.steps.clear()
    for rows in (4, 8, 12) * 6:  # 20 ms a step plus 5 ms a row
        cost.observe(rows, 0.020 + 0.005 * rows)
    fixed, per_row = cost.fit()
    assert abs(fixed - 0.020) < 1e-9 and abs(per_row - 0.005) < 1e-9
    assert abs(cost.of_a_token(8) - 0.040 / 0.060) < 1e-9  # a row of an 8-row step: two thirds of a token


def test_busy_steps_ask_more_of_guesses_where_a_row_costs_more_than_busy_row_cost():
    from types import SimpleNamespace

    from backends.llamacpp.speculative_steps import SpeculativeSteps

    options = SpeculationOptions(busy_row_cost=0.75)
    steps = SpeculativeSteps(SimpleNamespace(kv_unified=True), None, options, 4096, None, sample=lambda slot: None)
    assert steps.busy_row_cost(8) == 0.75  # nothing measured yet
    for rows in (4, 8, 12) * 8:  # 8 ms a step plus 9 ms a row: a row of an 8-row step costs 0.9 of a token
        steps.observe_step(rows, 0.008 + 0.009 * rows)
    assert abs(steps.busy_row_cost(8) - 0.9) < 1e-6
    assert steps.busy_row_cost(2) == 0.75  # two rows share the fixed part: a row costs 0.69 of a token there
    drafter = SequenceDrafter([], options)
    drafter.drafted, drafter.accepted, drafter.broken = 10, 8, 1  # a guess holds 8 times in 9: 0.89
    assert drafter.busy_budget(16) == 2 and drafter.busy_budget(16, steps.busy_row_cost(8)) == 0
