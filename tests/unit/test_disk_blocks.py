"""The disk prompt cache as the DISK medium of our KV events (backends/llamacpp/disk_blocks.py, wired into
prompt_cache.py): a stored state's blocks carry the same hashes the live ledger gives the same tokens, entries that
share a prefix announce it once, and what leaves the store (evicted, dropped as bad, removed by another replica that
shares the directory) is removed from the router's view."""

from __future__ import annotations

import threading
import time

import numpy as np

from backends.llamacpp import disk_blocks
from backends.llamacpp.block_ledger import BlockLedger
from backends.llamacpp.disk_blocks import DiskBlocks
from backends.llamacpp.prompt_cache import PromptCache, _stored_key


def key(tokens) -> bytes:
    return np.asarray(tokens, dtype="<i4").tobytes()


def test_stored_blocks_are_named_as_the_live_ledger_names_them():
    ledger, disk = BlockLedger(block_size=4), DiskBlocks(block_size=4)
    tokens = list(range(10, 21))  # two full blocks and three tokens
    ledger.extend(0, tokens)
    disk.add(key(tokens))
    [live], [stored] = ledger.drain(), disk.drain()
    assert stored["block_hashes"] == live["block_hashes"] and stored["token_ids"] == live["token_ids"]
    assert stored["medium"] == "DISK" and live["medium"] == "GPU" and stored["parent_block_hash"] is None


def test_a_shared_prefix_is_announced_once_and_removed_with_its_last_entry():
    disk = DiskBlocks(block_size=2)
    disk.add(key([1, 2, 3, 4]))
    disk.add(key([1, 2, 3, 4, 5, 6, 7]))  # continues the first entry: only its new block is announced
    first, second = disk.drain()
    assert len(first["block_hashes"]) == 2 and second["token_ids"] == [5, 6]
    assert second["parent_block_hash"] == first["block_hashes"][-1]
    disk.sync([key([1, 2, 3, 4, 5, 6, 7])])  # the shorter entry was evicted: its blocks are still on disk
    assert disk.drain() == []
    disk.sync([])
    [gone] = disk.drain()
    assert gone["type"] == "BlockRemoved" and gone["medium"] == "DISK" and len(gone["block_hashes"]) == 3


def test_adapter_states_are_other_blocks():
    base, adapted = DiskBlocks(block_size=2), DiskBlocks(block_size=2, adapter="a1b2")
    base.add(key([1, 2]))
    adapted.add(key([1, 2]))
    [plain], [lora] = base.drain(), adapted.drain()
    assert plain["block_hashes"] != lora["block_hashes"] and lora["lora_name"] == "a1b2"


def test_the_cache_announces_its_writes_and_what_another_process_changes_in_the_store(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_blocks, "SCAN_SECONDS", 0.2)
    monkeypatch.setattr("backends.llamacpp.prompt_cache.SCAN_SECONDS", 0.2)
    cache = PromptCache(tmp_path, capacity_bytes=1 << 30, min_tokens=2, format_tag="test")
    cache.announce_blocks(block_size=2, adapter="")
    done = threading.Event()
    cache.offer((1, 2, 3, 4), b"state", lambda ok: done.set())
    assert done.wait(10)
    [stored] = cache.disk_blocks.drain()
    assert stored["type"] == "BlockStored" and stored["token_ids"] == [1, 2, 3, 4]
    other = PromptCache(tmp_path, capacity_bytes=1 << 30, min_tokens=2, format_tag="test")  # a second replica
    other.store.discard((1, 2, 3, 4))
    other.store.cache.set(_stored_key((7, 8)), b"written elsewhere")
    other.close()
    deadline, events = time.monotonic() + 10, []
    while time.monotonic() < deadline and len(events) < 2:
        events += cache.disk_blocks.drain()
        time.sleep(0.05)
    assert {(e["type"], tuple(e.get("token_ids", ()))) for e in events} == {("BlockRemoved", ()),
                                                                           ("BlockStored", (7, 8))}
    cache.close()
