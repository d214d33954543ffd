"""A scheduler step's chunks reach the event loop together when the step ends, in order, with one wake-up."""

from __future__ import annotations

import asyncio
import threading

from backends.step_outbox import LoopEmit, StepOutbox


def test_a_steps_chunks_arrive_together_in_order_with_one_wake_up_per_loop():
    loop = asyncio.new_event_loop()
    wake_ups = []
    original = loop.call_soon_threadsafe

    def counted(callback, *args):
        wake_ups.append(callback)
        return original(callback, *args)
    loop.call_soon_threadsafe = counted
    first, second = asyncio.Queue(), asyncio.Queue()
    outbox, plain = StepOutbox(), []
    emits = [outbox.holding(LoopEmit(loop, first)), outbox.holding(LoopEmit(loop, second)),
             outbox.holding(plain.append)]

    def step() -> None:  # the scheduler thread: three sequences emit during one step
        for index in range(3):
            for emit in emits:
                emit(index)
        assert plain == [] and not wake_ups  # held until the step ends
        outbox.flush()
    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        assert [first.get_nowait() for _ in range(3)] == [0, 1, 2]
        assert [second.get_nowait() for _ in range(3)] == [0, 1, 2]
    finally:
        loop.close()
    assert plain == [0, 1, 2]  # an emit that is no LoopEmit is called at the flush
    assert len(wake_ups) == 1
    assert outbox.holding(emits[0]).target is emits[0].target  # (holding twice does not nest)


def test_an_emit_to_a_closed_loop_is_dropped():
    loop = asyncio.new_event_loop()
    emit = LoopEmit(loop, asyncio.Queue())
    loop.close()
    emit("late")  # the server shut down: nobody is listening, and the scheduler thread must not fail
