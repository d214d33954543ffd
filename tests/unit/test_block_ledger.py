"""The block ledger (backends/llamacpp/block_ledger.py): the KV events a router receives describe exactly the full
blocks the context's sequences hold, a block shared by two slots is announced once and removed with its last holder,
and the hashes chain (the same block after another prefix is another block)."""

from __future__ import annotations

from backends.llamacpp.block_ledger import BlockLedger


def stored(events: list[dict]) -> list[int]:
    return [h for e in events if e["type"] == "BlockStored" for h in e["block_hashes"]]


def removed(events: list[dict]) -> list[int]:
    return [h for e in events if e["type"] == "BlockRemoved" for h in e["block_hashes"]]


def test_full_blocks_are_announced_as_a_sequence_grows():
    ledger = BlockLedger(block_size=4)
    ledger.extend(0, list(range(6)))  # one full block, two tokens of the next
    [first] = ledger.drain()
    assert first["type"] == "BlockStored" and first["token_ids"] == [0, 1, 2, 3] and first["parent_block_hash"] is None
    assert first["block_size"] == 4 and first["medium"] == "GPU" and first["lora_name"] is None
    ledger.extend(0, list(range(12)))
    [second] = ledger.drain()
    assert second["token_ids"] == list(range(4, 12)) and len(second["block_hashes"]) == 2
    assert second["parent_block_hash"] == first["block_hashes"][0]
    ledger.extend(0, list(range(13)))
    assert ledger.drain() == []  # no new full block


def test_a_shared_block_is_announced_once_and_removed_with_its_last_holder():
    ledger = BlockLedger(block_size=4)
    ledger.extend(0, [1, 2, 3, 4, 5, 6, 7, 8])
    ledger.extend(1, [1, 2, 3, 4, 9, 9, 9, 9])  # the first block is the same, the second is not
    events = ledger.drain()
    first_hash = events[0]["block_hashes"][0]
    assert stored(events).count(first_hash) == 1 and len(stored(events)) == 3
    assert events[1]["parent_block_hash"] == first_hash  # slot 1's own block, after the shared one
    ledger.truncate(0, 0)
    assert removed(ledger.drain()) == [events[0]["block_hashes"][1]]  # slot 1 still holds the shared block
    ledger.truncate(1, 3)
    assert set(removed(ledger.drain())) == {first_hash, events[1]["block_hashes"][0]}


def test_a_cut_keeps_the_blocks_before_it_and_the_same_tokens_after_another_prefix_are_another_block():
    ledger = BlockLedger(block_size=2)
    ledger.extend(0, [1, 2, 3, 4, 5, 6])
    before = stored(ledger.drain())
    ledger.sync(0, kept=3, tokens=[1, 2, 3, 9, 5, 6])  # a new request shared 3 tokens: block 2 onwards differ
    events = ledger.drain()
    assert removed(events) == before[1:]
    assert stored(events) and not set(stored(events)) & set(before)  # [5, 6] after [3, 9] is not [5, 6] after [3, 4]


def test_adapters_make_other_blocks():
    ledger = BlockLedger(block_size=2)
    ledger.extend(0, [1, 2])
    ledger.extend(1, [1, 2], adapter="lora-a")
    events = ledger.drain()
    assert len(set(stored(events))) == 2 and events[1]["lora_name"] == "lora-a"
