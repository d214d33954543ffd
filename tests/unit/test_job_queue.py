import threading

import pytest

from backends.job_queue import JobQueue
from errors import EngineBusy, EngineFailure


def _all() -> int:
    return 100


def test_take_returns_jobs_in_submission_order_up_to_how_many():
    queue = JobQueue(max_queue=5)
    for job in "abc":
        queue.submit(job)
    assert queue.take(lambda: 2) == ["a", "b"]
    assert len(queue) == 1
    assert queue.take(_all) == ["c"]


def test_submit_refuses_with_engine_busy_when_full():
    queue = JobQueue(max_queue=2)
    queue.submit("a")
    queue.submit("b")
    with pytest.raises(EngineBusy):
        queue.submit("c")
    assert len(queue) == 2


def test_submit_that_starts_at_once_bypasses_a_full_queue():
    queue = JobQueue(max_queue=0)
    with pytest.raises(EngineBusy):
        queue.submit("a")
    queue.submit("b", starts_at_once=True)
    assert queue.take(_all) == ["b"]


def test_submit_after_close_fails_even_when_it_starts_at_once():
    queue = JobQueue(max_queue=5)
    queue.close()
    with pytest.raises(EngineFailure):
        queue.submit("a")
    with pytest.raises(EngineFailure):
        queue.submit("b", starts_at_once=True)


def test_cancel_drops_a_waiting_job_and_ignores_unknown_ones():
    queue = JobQueue(max_queue=5)
    queue.submit("a")
    queue.submit("b")
    queue.cancel("a")
    queue.cancel("never-submitted")
    assert queue.take(_all) == ["b"]


def test_closed_queue_drains_accepted_jobs_before_returning_none():
    queue = JobQueue(max_queue=5)
    queue.submit("a")
    queue.close()
    assert queue.take(_all) == ["a"]
    assert queue.take(_all) is None


def test_closed_empty_queue_returns_empty_list_while_worker_is_busy():
    queue = JobQueue(max_queue=5)
    queue.close()
    assert queue.take(_all, busy=lambda: True) == []
    assert queue.take(_all, busy=lambda: False) is None


def test_take_while_busy_does_not_block_on_an_empty_queue():
    queue = JobQueue(max_queue=5)
    assert queue.take(_all, busy=lambda: True) == []


def test_take_with_no_room_takes_nothing():
    queue = JobQueue(max_queue=5)
    queue.submit("a")
    assert queue.take(lambda: 0) == []
    assert len(queue) == 1


def _take_in_thread(queue: JobQueue) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(queue.take(_all)), daemon=True)
    thread.start()
    return thread, result


def test_take_blocks_until_a_job_is_submitted():
    queue = JobQueue(max_queue=5)
    thread, result = _take_in_thread(queue)
    thread.join(timeout=0.2)
    assert thread.is_alive() and result == []
    queue.submit("job")
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert result == [["job"]]


def test_close_wakes_a_blocked_take_which_returns_none():
    queue = JobQueue(max_queue=5)
    thread, result = _take_in_thread(queue)
    thread.join(timeout=0.2)
    assert thread.is_alive()
    queue.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert result == [None]


def test_tenants_take_turns_so_a_flood_does_not_starve_a_quiet_key():
    from dataclasses import dataclass

    @dataclass(eq=False)
    class TenantJob:
        tenant: str
        name: str

    queue = JobQueue(max_queue=100)
    for i in range(5):
        queue.submit(TenantJob("flood", f"f{i}"))
    queue.submit(TenantJob("quiet", "q0"))
    taken = [job.name for job in queue.take(lambda: 3)]
    assert taken == ["q0", "f0", "f1"]  # the quiet key had nothing waiting: it gets the next free slot, not the sixth
    queue.submit(TenantJob("quiet", "q1"))
    queue.submit(TenantJob("quiet", "q2"))
    assert [job.name for job in queue.take(lambda: 10)] == ["q1", "f2", "q2", "f3", "f4"]  # then they alternate
