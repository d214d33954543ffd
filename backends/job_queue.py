"""The waiting line between the event loop and a local engine's worker thread (llama.cpp's scheduler and the
transformers batcher share it): jobs are submitted and cancelled from the event loop, taken by the worker.

Tenants take turns: each job carries its tenant (an API key's label), every tenant has its own line, and the
worker takes the next job from the tenant whose turn it is. A tenant with nothing waiting gets the next turn, and
one that is served goes to the back, so a key that floods the server delays another key's request until the next
free slot (one slot turnover), not by its whole backlog. Within a tenant, first come first served. Once closed the queue takes no new jobs; the worker drains what was accepted, then stops.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

from errors import EngineBusy, EngineFailure

Job = TypeVar("Job")


def _tenant(job) -> str:
    return getattr(job, "tenant", "")


class JobQueue(Generic[Job]):
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._lines: OrderedDict[str, deque[Job]] = OrderedDict()  # first key: the tenant whose turn it is
        self._size = 0
        self._wakeup = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return self._size

    # ---------------------------------------------------------------- event-loop side

    def submit(self, job: Job, *, starts_at_once: bool = False) -> None:
        """Queue `job`; refused when closed (unloading) or when the line is full, unless it `starts_at_once`."""
        with self._wakeup:
            if self._closed:
                raise EngineFailure("This model is being unloaded; retry the request.")
            if self._size >= self.max_queue and not starts_at_once:
                raise EngineBusy("All sequences are busy and the queue is full; retry later.")
            tenant = _tenant(job)
            if tenant not in self._lines:  # a tenant with nothing waiting has the next turn
                self._lines[tenant] = deque()
                self._lines.move_to_end(tenant, last=False)
            self._lines[tenant].append(job)
            self._size += 1
            self._wakeup.notify()

    def cancel(self, job: Job) -> bool:
        """Drop `job` if it still waits, and wake the worker (which stops a running job that is cancelled).
        True: it was still waiting, so the engine never saw it."""
        with self._wakeup:
            line = self._lines.get(_tenant(job))
            waiting = line is not None and job in line
            if waiting:
                line.remove(job)
                self._size -= 1
                if not line:
                    del self._lines[_tenant(job)]
            self._wakeup.notify()
            return waiting

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()

    # ---------------------------------------------------------------- worker side

    def take(self, how_many: Callable[[], int], busy: Callable[[], bool] = lambda: False) -> list[Job] | None:
        """Block until there is work, then take up to `how_many()` waiting jobs, tenants in turn (asked under the
        lock, so the worker can count its free room). None once closed with nothing waiting and the worker idle."""
        with self._wakeup:
            while not self._size and not busy():
                if self._closed:
                    return None
                self._wakeup.wait()
            return [self._next() for _ in range(min(how_many(), self._size))]

    def _next(self) -> Job:
        tenant, line = next(iter(self._lines.items()))
        job = line.popleft()
        self._size -= 1
        del self._lines[tenant]
        if line:  # its next job waits for every other tenant's turn
            self._lines[tenant] = line
        return job
