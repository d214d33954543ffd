"""Persistent prompt cache: sequences' KV state in `LlamaDiskCache` (diskcache) under `cache/`, keyed by tokens.

One store per model file (its own sub-directory, named from the file's name, size and mtime), so two models
never share states. Values are per-sequence llama.cpp states (`llama_state_seq_get_data`), not whole contexts,
so saving one conversation never copies everyone's KV.

Writes happen on a background thread, off the request path: the scheduler hands over a snapshot and moves on.
A write (tens of MB to serialise and store) waits while the engine is busy, up to `DEFER_SECONDS`, so it takes
CPU from the idle moments between requests instead of from the next turn's prompt evaluation. A burst cannot
queue writes without bound (at most `MAX_PENDING_WRITES` wait; older ones are dropped, the same tokens are
coalesced). Everything that can go wrong on disk (a corrupt or truncated entry, a state from
another llama.cpp build, a full disk, a deleted directory) is logged, the entry dropped, and the request
served cold. diskcache itself is safe for several processes sharing one directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp.llama import LlamaState
from llama_cpp.llama_cache import LlamaDiskCache

from backends.llamacpp.disk_blocks import SCAN_SECONDS, DiskBlocks
from backends.thread_priority import lower_this_threads_priority

logger = logging.getLogger(__name__)

MAX_PENDING_WRITES = 2
KNOWN_SAVED_LIMIT = 4096
DEFER_SECONDS = 2.0  # longest a write waits for the engine to go idle (a caller waiting on it never waits)
IDLE_POLL_SECONDS = 0.005


def model_namespace(model_id: str, model_path: Path) -> str:
    """A directory name per catalog model that changes whenever its file does (a replaced file never sees old
    states, and two catalog entries, even of the same file with different settings, never share states)."""
    stat = model_path.stat()
    key = f"{model_id}|{model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id.removesuffix(".gguf"))[:60]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def state_format_tag(*, flash_attn: bool, swa_full: bool, kv_unified: bool) -> str:
    """What a saved state's byte layout depends on besides the model: the llama.cpp build and KV layout options.
    (A state saved from one shared cache did not load into a cache of one stream per slot: the restore failed and
    took the slot's own cached prefix with it.)"""
    return f"llama-cpp-python {llama_cpp.__version__}; v_trans={not flash_attn}; swa_full={swa_full}; " \
        f"kv_unified={kv_unified}"


class StoredSequenceState(LlamaState):
    """One sequence's state (a `LlamaState`, as LlamaDiskCache's interface takes it), plus what it takes to trust
    it later.

    On disk (our own format, not LlamaDiskCache's pickle): a magic line, a small JSON header (format tag, token
    count, size, checksum), then the state's bytes as llama.cpp wrote them. Not a pickle: pickling copies tens of MB
    holding the GIL (the scheduler thread waited on it), and unpickling a file from `cache/` would run whatever code
    it names."""

    def __init__(self, tokens: tuple[int, ...], state: bytes | bytearray, format_tag: str,
                 checksum: int | None = None) -> None:
        super().__init__(
            input_ids=np.asarray(tokens, dtype=np.intc),
            scores=np.zeros(0, dtype=np.single),
            n_tokens=len(tokens),
            llama_state=state,
            llama_state_size=len(state),
            seed=0,
        )
        self.format_tag = format_tag
        self.checksum = _checksum(state) if checksum is None else checksum

    def verify(self, tokens: tuple[int, ...], format_tag: str) -> str | None:
        """None when the entry can be restored, else why not."""
        if self.format_tag != format_tag:
            return f"written by another build ({self.format_tag!r})"
        if self.n_tokens != len(tokens) or len(self.llama_state) != self.llama_state_size:
            return "truncated"
        if _checksum(self.llama_state) != self.checksum:
            return "checksum mismatch"
        return None

    def as_stream(self) -> io.RawIOBase:
        header = json.dumps({"format_tag": self.format_tag, "n_tokens": self.n_tokens,
                             "size": self.llama_state_size, "checksum": self.checksum}).encode()
        return _Concatenation(_MAGIC + len(header).to_bytes(4, "little") + header, self.llama_state)

    @classmethod
    def read_from(cls, tokens: tuple[int, ...], stream) -> StoredSequenceState:
        """Parse what `as_stream` wrote (ValueError if it is not that); the state lands in one writable buffer
        llama.cpp reads in place."""
        if stream.read(len(_MAGIC)) != _MAGIC:
            raise ValueError("not a stored sequence state")
        header = json.loads(stream.read(int.from_bytes(stream.read(4), "little")))
        state = bytearray(header["size"])
        got = stream.readinto(state)
        entry = cls(tokens, state[:got] if got != len(state) else state, header["format_tag"], header["checksum"])
        entry.n_tokens, entry.llama_state_size = header["n_tokens"], header["size"]
        return entry


_MAGIC = b"llm-server sequence state 1\n"


class _Concatenation(io.RawIOBase):
    """A read-only stream over several buffers, in order, without joining them (diskcache copies a file-like
    value to disk in chunks)."""

    def __init__(self, *parts) -> None:
        self._parts = [memoryview(part).cast("B") for part in parts]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._parts and not len(self._parts[0]):
            self._parts.pop(0)
        if not self._parts:
            return 0
        count = min(len(buffer), len(self._parts[0]))
        buffer[:count] = self._parts[0][:count]
        self._parts[0] = self._parts[0][count:]
        return count


_TOKEN = np.dtype("<i4")


def _stored_key(tokens) -> bytes:
    """Tokens as the store keys them: little-endian int32s. diskcache keeps bytes keys as they are, while a tuple
    key is pickled and optimised on every write and read (tens of ms for a long prompt); and a stored prefix of a
    prompt is a byte prefix of its key, compared at memory speed."""
    return np.asarray(tokens, dtype=_TOKEN).tobytes()


def _checksum(data: bytes) -> int:
    # Catches truncation and bit rot before llama.cpp sees the bytes; crc32 runs at memory speed (tens of MB
    # are checked on the request path), and nothing here defends against deliberate tampering of cache/.
    return zlib.crc32(data)


@dataclass(frozen=True)
class CachedPrefix:
    """A stored state read back: the tokens it covers and the llama.cpp sequence state bytes."""

    tokens: tuple[int, ...]
    state: bytes | bytearray


@dataclass
class PromptCacheStats:
    disk_hits: int = 0  # lookups that restored a state from disk
    disk_misses: int = 0  # lookups that found no usable stored prefix
    restored_tokens: int = 0  # prompt tokens not recomputed thanks to disk restores
    saves: int = 0
    save_errors: int = 0
    dropped_saves: int = 0  # snapshots discarded because writes were backed up
    bad_entries: int = 0  # corrupt, truncated or incompatible entries removed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


class PromptStateStore(LlamaDiskCache):
    """LlamaDiskCache with the behaviour a server needs: reads do not consume entries, size is bounded with
    least-recently-used eviction, lookups only return states whose tokens are a prefix of the prompt, and a
    vanished directory is recreated."""

    def __init__(self, directory: Path, capacity_bytes: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(str(directory), capacity_bytes)
        self._configure()

    def _configure(self) -> None:
        # diskcache evicts by itself on every write once the volume exceeds size_limit.
        self.cache.reset("size_limit", self.capacity_bytes)
        self.cache.reset("eviction_policy", "least-recently-used")

    def reopen_if_missing(self) -> None:
        if not (self.directory / "cache.db").exists():
            logger.warning("Prompt cache directory %s disappeared; recreating it", self.directory)
            self.cache.close()
            self.directory.mkdir(parents=True, exist_ok=True)
            super().__init__(str(self.directory), self.capacity_bytes)
            self._configure()

    def longest_prefix_key(self, tokens: tuple[int, ...], max_length: int) -> tuple[int, ...] | None:
        """The longest stored key that is a whole prefix of `tokens` and no longer than `max_length`.

        Whole prefixes only: a state can always be continued from its end, while cutting it shorter fails
        for sliding-window caches (gemma 2/3), where the older positions are gone."""
        wanted = _stored_key(tokens)
        best = b""
        for key in self.cache.iterkeys():  # (entries an older version keyed otherwise are passed over)
            if isinstance(key, bytes) and len(best) < len(key) <= 4 * max_length and wanted.startswith(key):
                best = key
        return tuple(np.frombuffer(best, dtype=_TOKEN).tolist()) if best else None

    def __getitem__(self, key) -> StoredSequenceState:
        stream = self.cache.get(_stored_key(key), default=None, read=True, retry=True)
        if stream is None:
            raise KeyError("Key not found")
        with stream:
            return StoredSequenceState.read_from(tuple(key), stream)

    def __setitem__(self, key, value: StoredSequenceState) -> None:
        # Handed over as a file: diskcache copies a file in 4 MB chunks, while bytes it would write line by line
        # (a state has a newline every few hundred bytes: tens of thousands of writes, tens of ms)
        self.cache.set(_stored_key(key), value.as_stream(), read=True, retry=True)

    def __contains__(self, key) -> bool:
        return _stored_key(key) in self.cache

    def discard(self, key: tuple[int, ...]) -> None:
        self.cache.delete(_stored_key(key), retry=True)

    def summary(self) -> dict[str, int | str]:
        return {"directory": str(self.directory), "entries": len(self.cache), "bytes": int(self.cache.volume()),
                "capacity_bytes": self.capacity_bytes}

    def close(self) -> None:
        self.cache.close()


@dataclass(eq=False)
class _PendingWrite:
    tokens: tuple[int, ...]
    state: bytes | bytearray
    done: Callable[[bool], None] | None = None  # told whether the state reached the disk
    queued_at: float = field(default_factory=time.monotonic)


class PromptCache:
    """The persistent prompt cache of one loaded model: lookups for new requests, background saves."""

    def __init__(self, directory: Path, capacity_bytes: int, min_tokens: int, format_tag: str) -> None:
        self.store = PromptStateStore(directory, capacity_bytes)
        self.min_tokens = min_tokens
        self.format_tag = format_tag
        self.stats = PromptCacheStats()
        self._pending: deque[_PendingWrite] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        # Digests of sequences known to be on disk, so they are not snapshotted again (bounded, oldest forgotten).
        self._known_saved: OrderedDict[bytes, None] = OrderedDict()
        self.busy: Callable[[], bool] = lambda: False  # the engine is evaluating (set by its owner)
        self.disk_blocks: DiskBlocks | None = None  # (--kv-events) what the store holds, as DISK-medium events
        self._next_scan = 0.0
        self._writer = threading.Thread(target=self._write_loop, name="prompt-cache-writer", daemon=True)
        self._writer.start()

    # ---------------------------------------------------------------- lookup (worker thread of the event loop)

    def lookup(self, tokens: list[int], max_length: int, in_memory: int) -> CachedPrefix | None:
        """The longest stored prefix of `tokens` (at most `max_length` long) if it beats the `in_memory` reuse."""
        if max_length < max(self.min_tokens, in_memory + 1):
            return None
        wanted = tuple(tokens)
        key = None
        try:
            self.store.reopen_if_missing()
            key = self.store.longest_prefix_key(wanted, max_length)
            if key is None or len(key) <= in_memory:
                self.stats.add(disk_misses=1 if key is None else 0)
                return None
            entry = self.store[key]
            problem = entry.verify(key, self.format_tag) if isinstance(entry, StoredSequenceState) else "not a state"
        except KeyError:  # evicted (maybe by another process) between the scan and the read
            self.stats.add(disk_misses=1)
            return None
        except Exception as exc:  # unreadable entry or database: serve cold, never fail the request
            logger.warning("Prompt cache lookup failed (%s); serving this request without it", exc)
            self._drop_quietly(key)
            return None
        if problem:
            logger.warning("Dropping prompt cache entry of %d tokens: %s", len(key), problem)
            self._drop_quietly(key)
            return None
        return CachedPrefix(tokens=key, state=entry.llama_state)

    def record_restore(self, prefix: CachedPrefix, restored: bool) -> None:
        """The scheduler's verdict on a looked-up state: restored, or rejected by llama.cpp (then it goes)."""
        if restored:
            self.stats.add(disk_hits=1, restored_tokens=len(prefix.tokens))
            self._remember_saved(prefix.tokens)
            return
        logger.warning("llama.cpp rejected a stored state of %d tokens; dropping it", len(prefix.tokens))
        self._drop_quietly(prefix.tokens)

    def _drop_quietly(self, key: tuple[int, ...] | None) -> None:
        self.stats.add(bad_entries=1)
        if key is None:
            return
        try:
            self.store.discard(key)
        except Exception:
            logger.exception("Could not remove a bad prompt cache entry")
        if self.disk_blocks is not None:
            self.disk_blocks.discard(_stored_key(key))

    # ---------------------------------------------------------------- block events (--kv-events)

    def announce_blocks(self, block_size: int, adapter: str) -> None:
        """Keep `disk_blocks` up to date: this cache's own writes at once, the store's other changes (eviction,
        other replicas sharing the directory) by a scan every SCAN_SECONDS, the first one now."""
        with self._wakeup:
            self.disk_blocks = DiskBlocks(block_size, adapter)
            self._next_scan = 0.0
            self._wakeup.notify()

    def _scan_due(self) -> bool:
        return self.disk_blocks is not None and time.monotonic() >= self._next_scan

    def _until_scan(self) -> float | None:
        return None if self.disk_blocks is None else max(0.0, self._next_scan - time.monotonic())

    def _scan(self) -> None:
        try:
            self.store.reopen_if_missing()
            self.disk_blocks.sync(list(self.store.cache.iterkeys()))
        except Exception as exc:  # a routing hint: never worth failing over
            logger.warning("Could not list the prompt cache for KV events: %s", exc)
        self._next_scan = time.monotonic() + SCAN_SECONDS

    # ---------------------------------------------------------------- saving (scheduler thread -> writer thread)

    def wants(self, tokens: list[int], *, force: bool = False) -> bool:
        """Whether a sequence holding `tokens` is worth a snapshot (checked before copying any state)."""
        return (force or len(tokens) >= self.min_tokens) and _digest(tokens) not in self._known_saved

    def offer(self, tokens: tuple[int, ...], state: bytes | bytearray,
              done: Callable[[bool], None] | None = None) -> None:
        """Queue a snapshot for writing; returns at once. Backed-up writes are dropped oldest first."""
        with self._wakeup:
            for pending in list(self._pending):
                if pending.tokens == tokens:  # coalesce: the newer snapshot of the same tokens wins
                    self._pending.remove(pending)
                    if pending.done:
                        done = _both(pending.done, done)
            self._pending.append(_PendingWrite(tokens, state, done))
            while len(self._pending) > MAX_PENDING_WRITES:
                waited = [p for p in self._pending if p.done is None]
                victim = waited[0] if waited else self._pending[0]
                self._pending.remove(victim)
                self.stats.add(dropped_saves=1)
                if victim.done:
                    victim.done(False)
            self._wakeup.notify()

    def _write_loop(self) -> None:
        # Serialising and writing tens of MB takes cores the next turn's prompt evaluation wants (measured on a
        # hybrid agent conversation: ~25 ms a turn on 2 cores): the engine's threads come first.
        lower_this_threads_priority()
        while True:
            if self._scan_due() and not self._closing:
                self._scan()
            with self._wakeup:
                while not self._pending and not self._closing and not self._scan_due():
                    self._wakeup.wait(self._until_scan())
                if not self._pending:
                    if self._closing:
                        return
                    continue  # (a scan is due)
                head = self._pending[0]
                if (head.done is None and not self._closing and self.busy()
                        and time.monotonic() - head.queued_at < DEFER_SECONDS):
                    self._wakeup.wait(IDLE_POLL_SECONDS)
                    continue
                item = self._pending.popleft()
            ok = self._write(item)
            if item.done:
                item.done(ok)

    def _write(self, item: _PendingWrite) -> bool:
        try:
            self.store.reopen_if_missing()
            self.store[item.tokens] = StoredSequenceState(item.tokens, item.state, self.format_tag)
        except Exception as exc:  # full disk, removed directory, locked database...: log and carry on
            logger.warning("Could not save a prompt state of %d tokens: %s", len(item.tokens), exc)
            self.stats.add(save_errors=1)
            return False
        self._remember_saved(item.tokens)
        self.stats.add(saves=1)
        if self.disk_blocks is not None:
            self.disk_blocks.add(_stored_key(item.tokens))
        return True

    def _remember_saved(self, tokens: tuple[int, ...]) -> None:
        with self._wakeup:
            self._known_saved[_digest(tokens)] = None
            while len(self._known_saved) > KNOWN_SAVED_LIMIT:
                self._known_saved.popitem(last=False)

    # ---------------------------------------------------------------- lifecycle

    def summary(self) -> dict:
        try:
            stored = self.store.summary()
        except Exception as exc:
            stored = {"error": str(exc)}
        with self._wakeup:
            pending = len(self._pending)
        return {**stored, **self.stats.as_dict(), "pending_writes": pending, "min_tokens": self.min_tokens}

    def close(self) -> None:
        """Finish the writes already queued, then stop."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        self._writer.join()
        self.store.close()


def _digest(tokens) -> bytes:
    return hashlib.blake2b(np.asarray(tokens, dtype=np.int32).tobytes(), digest_size=16).digest()


def _both(first: Callable[[bool], None], second: Callable[[bool], None] | None) -> Callable[[bool], None]:
    if second is None:
        return first

    def both(ok: bool) -> None:
        first(ok)
        second(ok)

    return both
