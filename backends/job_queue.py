"""The waiting line between the event loop and a local engine's worker thread (llama.cpp's scheduler and the
transformers batcher share it): jobs are submitted and cancelled from the event loop, taken by the worker.

Once closed it takes no new jobs; the worker drains what was already accepted and then stops.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from errors import EngineBusy, EngineFailure

Job = TypeVar("Job")


class JobQueue(Generic[Job]):
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._waiting)

    # ---------------------------------------------------------------- event-loop side

    def submit(self, job: Job, *, starts_at_once: bool = False) -> None:
        """Queue `job`; refused when closed (unloading) or when the line is full, unless it `starts_at_once`."""
        with self._wakeup:
            if self._closed:
                raise EngineFailure("This model is being unloaded; retry the request.")
            if len(self._waiting) >= self.max_queue and not starts_at_once:
                raise EngineBusy("All sequences are busy and the queue is full; retry later.")
            self._waiting.append(job)
            self._wakeup.notify()

    def cancel(self, job: Job) -> None:
        """Drop `job` if it still waits, and wake the worker (which stops a running job that is cancelled)."""
        with self._wakeup:
            if job in self._waiting:
                self._waiting.remove(job)
            self._wakeup.notify()

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()

    # ---------------------------------------------------------------- worker side

    def take(self, how_many: Callable[[], int], busy: Callable[[], bool] = lambda: False) -> list[Job] | None:
        """Block until there is work, then take up to `how_many()` waiting jobs (asked under the lock, so the
        worker can count its free room). None once closed with nothing waiting and the worker not `busy`."""
        with self._wakeup:
            while not self._waiting and not busy():
                if self._closed:
                    return None
                self._wakeup.wait()
            return [self._waiting.popleft() for _ in range(min(how_many(), len(self._waiting)))]
