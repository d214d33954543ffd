"""What the llama.cpp context holds, in blocks of tokens, as KV-cache events for a router (`--kv-events`).

A KV-aware router (vllm-router's `kv_aware`, Dynamo, llm-d) keeps an index of which replica holds which prompt
prefixes, fed by vLLM-format events: `BlockStored` (full blocks of `block_size` tokens, each named by a hash chained
from its parent, with their token ids) and `BlockRemoved`. The router matches a new prompt's tokens against the
stored blocks and sends it where most of it is already evaluated.

The scheduler tells the ledger what each slot's sequence holds as it changes: blocks completed by a step, a prefix
cut when a new request reuses part of a slot, a slot cleared. Several slots can hold the same block (a shared
system prompt): it is announced when the first slot holds it and removed when the last one drops it. Events wait
in `pending` until the engine's owner drains them (scheduler thread writes, event loop reads).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter

MEDIUM = "GPU"  # (vLLM's name for the engine's own KV memory, wherever it lives; routers credit it fully)


class BlockLedger:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._held: dict[int, list[int]] = {}  # seq id -> hashes of the full blocks its sequence holds, in order
        self._adapter: dict[int, str] = {}  # seq id -> the adapter set its KV was computed with
        self._holders: Counter[int] = Counter()
        self._pending: list[dict] = []
        self._lock = threading.Lock()

    def extend(self, seq_id: int, tokens: list[int], adapter: str = "", length: int | None = None) -> None:
        """The sequence holds `tokens` (the first `length` of them, if given; its earlier blocks unchanged):
        announce the blocks it completed. Cheap when it completed none (every step, every slot)."""
        held = self._held.setdefault(seq_id, [])
        self._adapter.setdefault(seq_id, adapter)
        size = self.block_size
        complete = (len(tokens) if length is None else length) // size
        if complete <= len(held):
            return
        run, run_tokens, run_parent = [], [], None  # consecutive blocks no other slot holds: one event
        for index in range(len(held), complete):
            block, previous = tokens[index * size:(index + 1) * size], (held[-1] if held else None)
            digest = block_hash(previous, block, adapter)
            held.append(digest)
            self._holders[digest] += 1
            if self._holders[digest] == 1:
                if not run:
                    run_parent = previous
                run.append(digest)
                run_tokens.extend(block)
            elif run:
                self._stored(run, run_parent, run_tokens, adapter)
                run, run_tokens = [], []
        if run:
            self._stored(run, run_parent, run_tokens, adapter)

    def truncate(self, seq_id: int, length: int) -> None:
        """The sequence now holds only its first `length` tokens (0: nothing)."""
        held = self._held.get(seq_id, [])
        keep = length // self.block_size
        dropped, held[keep:] = held[keep:], []
        gone = []
        for digest in dropped:
            self._holders[digest] -= 1
            if self._holders[digest] <= 0:
                del self._holders[digest]
                gone.append(digest)
        if gone:
            with self._lock:
                self._pending.append({"type": "BlockRemoved", "block_hashes": gone, "medium": MEDIUM})
        if not held:
            self._adapter.pop(seq_id, None)

    def sync(self, seq_id: int, kept: int, tokens: list[int], adapter: str = "") -> None:
        """The sequence kept its first `kept` tokens and now holds `tokens` (a new request reused part of it)."""
        if self._adapter.get(seq_id, adapter) != adapter:
            kept = 0  # (KV computed with other adapters is other blocks)
        self.truncate(seq_id, kept)
        self._adapter[seq_id] = adapter
        self.extend(seq_id, tokens, adapter)

    def clear(self) -> None:
        """Everything goes (the context is freed)."""
        for seq_id in list(self._held):
            self.truncate(seq_id, 0)

    def drain(self) -> list[dict]:
        with self._lock:
            events, self._pending = self._pending, []
        return events

    def _stored(self, hashes: list[int], parent: int | None, tokens: list[int], adapter: str) -> None:
        with self._lock:
            self._pending.append({
                "type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens,
                "block_size": self.block_size, "lora_id": None, "medium": MEDIUM, "lora_name": adapter or None,
            })


def block_hash(parent: int | None, block: list[int], adapter: str) -> int:
    """A block's name: its tokens, its whole prefix (through the parent's name) and its adapters, in 63 bits."""
    data = b"%d|%s|" % (parent or 0, adapter.encode()) + b",".join(b"%d" % token for token in block)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1
