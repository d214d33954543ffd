"""Background responses (`background: true`): the answer is generated after the request returns, by a task that
holds the model lease and the key's quota ticket (handed over by `serve`, which admitted the request and charges
its tokens like any other's: api/serving.py `LocalBackground`); the client polls `GET /v1/responses/{id}` and
may `POST .../cancel`, on this instance or any other sharing the database (the cancel is written to the database;
the instance running the response sees it within CANCEL_POLL_SECONDS and stops). The stored object says where it
stands: queued, in_progress, then completed / incomplete / failed / cancelled. A server stopped mid-generation
leaves `in_progress` rows, which the next instance to look marks failed (state/instance_liveness.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

from state.response_store import ResponseStore

logger = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.5


class BackgroundRuns:
    def __init__(self, store: ResponseStore) -> None:
        self.store = store
        self._tasks: dict[str, asyncio.Task] = {}
        self._watcher: asyncio.Task | None = None

    async def start(self, response: dict, items: list, tenant: str, generate: Callable[[], Awaitable[None]]) -> None:
        """Store `response` (queued) and run `generate()` in a task (its writer stores the final state). Returns
        once the queued response is in the database: the client polls it next, maybe on another instance."""

        def save(state: dict) -> Future:
            return self.store.save(state, items, tenant)

        async def run() -> None:
            try:
                save({**response, "status": "in_progress"})
                await generate()
            except asyncio.CancelledError:
                save({**response, "status": "cancelled"})
            except Exception as exc:  # the client is gone: the failure goes into the stored response
                logger.exception("A background response failed")
                error = {"code": "server_error", "message": getattr(exc, "message", str(exc))}
                save({**response, "status": "failed", "error": error})
            finally:
                self._tasks.pop(response["id"], None)

        queued = save(response)
        self._tasks[response["id"]] = asyncio.create_task(run())
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_cancels())
        await asyncio.wrap_future(queued)

    async def cancel(self, response_id: str, tenant: str) -> None:
        """Cancel a background response: stopped here if it runs here, else by the instance running it."""
        await self.store.cancel(response_id, tenant)
        task = self._tasks.get(response_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch_cancels(self) -> None:
        """While responses run here: stop those another instance cancelled in the database."""
        while self._tasks:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            try:
                cancelled = await self.store.cancelled_among(list(self._tasks))
            except Exception:  # the database is briefly unreachable: look again next time
                logger.exception("Could not look for cancelled background responses")
                continue
            for response_id in cancelled:
                if task := self._tasks.get(response_id):
                    task.cancel()

    async def aclose(self) -> None:
        tasks = [*self._tasks.values(), *([self._watcher] if self._watcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
