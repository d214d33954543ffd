"""The persistent prompt cache's store and writer against real diskcache directories (no model needed)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from backends.llamacpp.prompt_cache import MAX_PENDING_WRITES, PromptCache, PromptStateStore, StoredSequenceState

TAG = "test-build"


def open_cache(directory: Path, min_tokens: int = 2, tag: str = TAG) -> PromptCache:
    return PromptCache(directory, capacity_bytes=1 << 30, min_tokens=min_tokens, format_tag=tag)


def save(cache: PromptCache, tokens: tuple[int, ...], state: bytes) -> None:
    done = threading.Event()
    cache.offer(tokens, state, lambda ok: done.set())
    assert done.wait(10)


def test_lookup_finds_the_longest_whole_prefix_within_the_limit(tmp_path):
    cache = open_cache(tmp_path)
    save(cache, (1, 2, 3), b"three")
    save(cache, (1, 2, 3, 4, 5), b"five")
    save(cache, (1, 2, 9, 9), b"other branch")
    prompt = [1, 2, 3, 4, 5, 6]
    assert cache.lookup(prompt, max_length=5, in_memory=0).state == b"five"
    assert cache.lookup(prompt, max_length=4, in_memory=0).state == b"three"  # (1..5) would not leave a token
    assert cache.lookup(prompt, max_length=5, in_memory=5) is None  # memory already holds as much
    assert cache.lookup([7, 8, 9], max_length=2, in_memory=0) is None
    cache.close()


def test_a_corrupt_value_on_disk_is_dropped_and_the_lookup_misses(tmp_path):
    cache = open_cache(tmp_path)
    save(cache, (1, 2, 3), bytes(range(256)) * 1000)  # large enough for diskcache to keep it in a file
    (value_file,) = tmp_path.rglob("*.val")
    value_file.write_bytes(value_file.read_bytes()[:5000])  # truncated, as by a crash mid-write or a full disk
    assert cache.lookup([1, 2, 3, 4], max_length=3, in_memory=0) is None
    assert cache.stats.bad_entries == 1
    assert len(cache.store.cache) == 0
    cache.close()


def test_flipped_state_bytes_fail_the_checksum(tmp_path):
    store = PromptStateStore(tmp_path, 1 << 30)
    entry = StoredSequenceState((1, 2, 3), b"good state", TAG)
    entry.llama_state = b"evil state"
    store[(1, 2, 3)] = entry
    store.close()
    cache = open_cache(tmp_path)
    assert cache.lookup([1, 2, 3, 4], max_length=3, in_memory=0) is None
    assert cache.stats.bad_entries == 1
    cache.close()


class _Planted:
    """A pickle that, unpickled, creates a file: what someone with write access to cache/ could plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_is_never_unpickled(tmp_path):
    import io
    import pickle

    from backends.llamacpp.prompt_cache import _stored_key

    marker = tmp_path / "executed"
    store = PromptStateStore(tmp_path / "store", 1 << 30)
    store.cache.set(_stored_key((1, 2, 3)), io.BytesIO(pickle.dumps(_Planted(marker))), read=True)
    store.close()
    cache = open_cache(tmp_path / "store")
    assert cache.lookup([1, 2, 3, 4], max_length=3, in_memory=0) is None
    assert not marker.exists() and cache.stats.bad_entries == 1
    cache.close()


def test_a_state_from_another_build_is_dropped(tmp_path):
    old = open_cache(tmp_path, tag="llama-cpp-python 0.0.1")
    save(old, (1, 2, 3), b"state")
    old.close()
    cache = open_cache(tmp_path)
    assert cache.lookup([1, 2, 3, 4], max_length=3, in_memory=0) is None
    assert cache.stats.bad_entries == 1 and len(cache.store.cache) == 0
    cache.close()


def test_a_deleted_cache_directory_is_recreated(tmp_path):
    import shutil

    directory = tmp_path / "model"
    cache = open_cache(directory)
    save(cache, (1, 2, 3), b"state")
    shutil.rmtree(directory)
    assert cache.lookup([1, 2, 3, 4], max_length=3, in_memory=0) is None  # no crash, just a miss
    save(cache, (4, 5, 6), b"again")
    assert cache.lookup([4, 5, 6, 7], max_length=3, in_memory=0).state == b"again"
    cache.close()


def test_short_sequences_and_ones_already_saved_are_not_snapshotted(tmp_path):
    cache = open_cache(tmp_path, min_tokens=3)
    assert not cache.wants([1, 2]) and cache.wants([1, 2], force=True)
    save(cache, (1, 2, 3), b"state")
    assert not cache.wants([1, 2, 3]) and cache.wants([1, 2, 3, 4])
    cache.close()


class SlowStore:
    """Stands in for the disk: every write blocks until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written: list[tuple[int, ...]] = []

    def reopen_if_missing(self) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        self.release.wait(10)
        self.written.append(key)

    def close(self) -> None:
        pass


def test_offering_never_waits_for_the_disk_and_backed_up_writes_are_bounded(tmp_path):
    cache = open_cache(tmp_path)
    cache.store.close()
    cache.store = SlowStore()
    started = time.perf_counter()
    for index in range(6):
        cache.offer((index, index, index), b"state")
    assert time.perf_counter() - started < 0.5  # the writer is stuck on the first write; offers return at once
    assert cache.summary()["pending_writes"] <= MAX_PENDING_WRITES
    cache.store.release.set()
    cache.close()
    assert cache.stats.dropped_saves >= 6 - 1 - MAX_PENDING_WRITES
    assert cache.store.written[-1] == (5, 5, 5)  # the newest snapshot always survives


def _write_many(directory: str, worker: int, count: int) -> None:
    cache = open_cache(Path(directory))
    for index in range(count):
        tokens = (worker, index, *range(50))
        done = threading.Event()
        cache.offer(tokens, bytes([worker, index]) * 20000, lambda ok: done.set())
        done.wait(30)
    cache.close()


@pytest.mark.timeout(120)
def test_two_processes_writing_one_directory_do_not_corrupt_it(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(tmp_path), worker, 15)) for worker in (1, 2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(90)
        assert process.exitcode == 0
    cache = open_cache(tmp_path)
    assert len(cache.store.cache) == 30
    for worker in (1, 2):
        for index in range(15):
            tokens = [worker, index, *range(50)]
            found = cache.lookup(tokens + [0], max_length=len(tokens), in_memory=0)
            assert found is not None and found.state == bytes([worker, index]) * 20000
    assert cache.stats.bad_entries == 0
    cache.close()
