"""The engine worker's watchdog (backends/worker/engine.py) on a stand-in process: it ends a worker that goes
silent, or whose engine has work but takes no step, and leaves alone one that is idle or stepping. The real hang
(a SIGSTOPped worker mid-stream) is tests/e2e/test_engine_workers.py."""

from __future__ import annotations

import threading
import time

import pytest

from backends.worker import engine as worker_engine
from backends.worker.engine import WorkerEngine

STALL = 0.3


class StandInProcess:
    def __init__(self) -> None:
        self.killed = threading.Event()

    def poll(self):
        return -9 if self.killed.is_set() else None

    def kill(self) -> None:
        self.killed.set()

    def wait(self, timeout=None):
        return -9


class StandInChannel:
    def __init__(self) -> None:
        self.shut = False

    def shut_down(self) -> None:
        self.shut = True  # (the reader thread would see the worker gone now)


class StandInEntry:
    id = "stand-in"


def watched() -> WorkerEngine:
    engine = WorkerEngine.__new__(WorkerEngine)  # (no process started: only the watchdog's state)
    engine.entry, engine.process, engine.channel = StandInEntry(), StandInProcess(), StandInChannel()
    engine._failure, engine._closing, engine._stalled = None, False, None
    engine._stats, engine._stall_seconds = (0, 0, None, None), STALL
    engine._heard_at = engine._moved_at = time.monotonic()
    threading.Thread(target=engine._watch, daemon=True).start()
    return engine


def hear(engine: WorkerEngine, stats: tuple) -> None:
    engine._heard_at = time.monotonic()
    engine._note_stats(stats)


@pytest.fixture(autouse=True)
def quick_watch(monkeypatch):
    monkeypatch.setattr(worker_engine, "WATCH_INTERVAL_SECONDS", 0.02)


def beat_for(engine: WorkerEngine, seconds: float, stats) -> None:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and not engine.process.killed.is_set():
        hear(engine, stats() if callable(stats) else stats)
        time.sleep(0.05)


def test_an_idle_worker_that_beats_is_left_alone():
    engine = watched()
    beat_for(engine, STALL * 4, (0, 0, 7, None))  # nothing to do: its steps stand still, rightly
    assert not engine.process.killed.is_set() and engine._stalled is None


def test_a_worker_stepping_through_its_work_is_left_alone():
    engine = watched()
    steps = iter(range(10_000))
    beat_for(engine, STALL * 4, lambda: (2, 1, next(steps), None))
    assert not engine.process.killed.is_set()


def test_a_worker_that_beats_but_takes_no_step_with_work_waiting_is_ended():
    engine = watched()
    hear(engine, (1, 0, 5, None))
    beat_for(engine, STALL * 4, (1, 0, 5, None))  # its event loop lives; its engine is stuck in a step
    assert engine.process.killed.is_set()
    assert engine._stalled.startswith("made no progress")
    deadline = time.monotonic() + 2
    while not engine.channel.shut and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.channel.shut  # the reader is woken even if a child of the worker still holds its socket


def test_a_silent_worker_is_ended():
    engine = watched()
    hear(engine, (0, 0, None, None))
    assert engine.process.killed.wait(STALL * 10)
    assert engine._stalled.startswith("stopped answering")
