"""Chunks a worker thread hands to the event loop: one wake-up of the loop per scheduler step, not one per token.

Every `call_soon_threadsafe` writes to the loop's self-pipe and wakes it; with 16 streams that was 16 wake-ups
(and 16 trips through the loop's ready queue) per step, each competing with llama.cpp's threads for the same two
cores. The scheduler holds a step's chunks in an outbox and delivers them together when the step ends, in the order
they were emitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LoopEmit:
    """A job's `emit`: puts chunks (or an exception) on an asyncio queue from another thread."""

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop = loop
        self.queue = queue

    def __call__(self, item: object) -> None:
        deliver_soon(self.loop, [(self.queue, item)])


def deliver_soon(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue, object]]) -> None:
    """From another thread: put each item on its queue, all in one callback of `loop` (one wake-up)."""
    try:
        loop.call_soon_threadsafe(_put_all, items)
    except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
        pass


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class StepOutbox:
    """Holds what a step's jobs emit; `flush` delivers it, one callback per event loop. An emit that is not a
    `LoopEmit` (a test's list.append, a bench's callback) is called at flush, in order."""

    def __init__(self) -> None:
        self._held: list[tuple[Callable[[object], None], object]] = []

    def holding(self, emit: Callable[[object], None]) -> Callable[[object], None]:
        """An emit that holds its chunks here until the next flush."""
        if isinstance(emit, _HeldEmit):
            emit = emit.target
        return _HeldEmit(self, emit)

    def flush(self) -> None:
        held, self._held = self._held, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for emit, item in held:
            if isinstance(emit, LoopEmit):
                by_loop.setdefault(emit.loop, []).append((emit.queue, item))
            else:
                emit(item)
        for loop, items in by_loop.items():
            deliver_soon(loop, items)


class _HeldEmit:
    __slots__ = ("outbox", "target")

    def __init__(self, outbox: StepOutbox, target: Callable[[object], None]) -> None:
        self.outbox = outbox
        self.target = target

    def __call__(self, item: object) -> None:
        self.outbox._held.append((self.target, item))
