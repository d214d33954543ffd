"""The prompt-lookup drafter: what it proposes from a sequence's own tokens, and how it backs off."""

from backends.llamacpp.speculation import SequenceDrafter, SpeculationOptions

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
    assert drafter.length == 5  # a full hit: longer
    drafter.verified(drafted=5, accepted=0)
    assert drafter.propose(8)  # one miss: keeps drafting
    drafter.verified(drafted=1, accepted=0)
    assert drafter.propose(8) == []  # two in a row: pauses (one step, then two, four, ...)
    assert drafter.propose(8)
    assert drafter.drafted == 8 + 1 + 1  # what was proposed (acceptance is counted by the scheduler)
