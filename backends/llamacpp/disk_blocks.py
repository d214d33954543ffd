"""The disk prompt cache as a second KV-event medium: blocks a replica can restore from `cache/` (`medium: DISK`).

A KV-aware router credits a replica for the prefix blocks it holds, fully for its live KV (`GPU`, block_ledger.py)
and partly for slower tiers (vllm-router's `--kv-penalty-disk`, 0.3 by default). Our disk cache is such a tier, and
one no llama.cpp server has: a stored state is restored in milliseconds instead of evaluated again. With
`--cache-dir` shared by several replicas, every replica holds every stored state, so each announces them all: after
a replica dies, the router still sees its conversations on DISK at the others.

What a stored entry holds is its key: the tokens of the state. Its blocks are named exactly as the live ledger names
them (the same chained hashes), so the router matches one prompt against both media. Entries come and go without us
(LRU eviction inside diskcache, other replicas' writes), so the cache's writer thread, besides announcing its own
writes at once, compares the store's keys with what it announced every `SCAN_SECONDS`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

import numpy as np

from backends.llamacpp.block_ledger import block_hash

DISK = "DISK"  # (vLLM's medium name for a disk tier; vllm-router gives it --kv-penalty-disk credit)
SCAN_SECONDS = 10.0


class DiskBlocks:
    """The blocks of the states in one disk store (one model, one adapter set), as announced. Used by the cache's
    writer thread and by lookups that drop a bad entry; drained from the event loop."""

    def __init__(self, block_size: int, adapter: str = "") -> None:
        self.block_size = block_size
        self.adapter = adapter
        self._entries: dict[bytes, list[int]] = {}  # store key -> hashes of its full blocks
        self._holders: Counter[int] = Counter()
        self._pending: list[dict] = []
        self._lock = threading.RLock()

    def sync(self, keys: Iterable) -> None:
        """The store holds exactly `keys` now (keys as the store spells them: int32 token bytes)."""
        present = {key for key in keys if isinstance(key, bytes)}
        with self._lock:
            known = set(self._entries)
        for key in present - known:
            self.add(key)
        for key in known - present:
            self.discard(key)

    def add(self, key: bytes) -> None:
        """A state for these tokens was stored."""
        with self._lock:
            if key in self._entries:
                return
        tokens = np.frombuffer(key, dtype="<i4").tolist()
        size, hashes, parent = self.block_size, [], None
        for start in range(0, len(tokens) - size + 1, size):
            parent = block_hash(parent, tokens[start:start + size], self.adapter)
            hashes.append(parent)
        with self._lock:
            self._hold(key, tokens, hashes)

    def _hold(self, key: bytes, tokens: list[int], hashes: list[int]) -> None:
        if key in self._entries:
            return
        size = self.block_size
        self._entries[key] = hashes
        # A key holding a block holds its whole prefix: what no other entry held yet is a suffix, one event.
        first_new = next((i for i, digest in enumerate(hashes) if not self._holders[digest]), len(hashes))
        self._holders.update(hashes)
        if first_new < len(hashes):
            self._emit({"type": "BlockStored", "block_hashes": hashes[first_new:],
                        "parent_block_hash": hashes[first_new - 1] if first_new else None,
                        "token_ids": tokens[first_new * size:len(hashes) * size], "block_size": size,
                        "lora_id": None, "medium": DISK, "lora_name": self.adapter or None})

    def discard(self, key: bytes) -> None:
        """The state for these tokens is gone (evicted, dropped as bad, removed by another replica)."""
        with self._lock:
            hashes = self._entries.pop(key, None)
            if not hashes:
                return
            self._holders.subtract(hashes)
            gone = [digest for digest in hashes if self._holders[digest] <= 0]
            for digest in gone:
                del self._holders[digest]
            if gone:
                self._emit({"type": "BlockRemoved", "block_hashes": gone, "medium": DISK})

    def clear(self) -> None:
        """Everything goes (the store is closed: its adapters unloaded)."""
        with self._lock:
            keys = list(self._entries)
        for key in keys:
            self.discard(key)

    def drain(self) -> list[dict]:
        with self._lock:
            events, self._pending = self._pending, []
        return events

    def _emit(self, event: dict) -> None:
        with self._lock:
            self._pending.append(event)
