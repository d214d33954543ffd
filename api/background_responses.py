"""Background responses (`background: true`): the answer is generated after the request returns, by a task that
holds the model lease and the key's quota ticket like any request; the client polls `GET /v1/responses/{id}` and
may `POST .../cancel`. The stored object says where it stands: queued, in_progress, then completed / incomplete /
failed / cancelled. A server stopped mid-generation leaves `in_progress` rows, which the next start marks failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from api.quotas import Ticket
from api.response_store import ResponseStore

logger = logging.getLogger(__name__)


class BackgroundRuns:
    def __init__(self, store: ResponseStore) -> None:
        self.store = store
        self._tasks: dict[str, asyncio.Task] = {}

    def start(self, response: dict, items: list, tenant: str, ticket: Ticket,
              generate: Callable[[Callable[[dict], None]], Awaitable[None]]) -> None:
        """Store `response` (queued) and run `generate(save)` in a task; `save` stores each new state."""

        def save(state: dict) -> None:
            self.store.save_now(state, items, tenant)

        async def run() -> None:
            try:
                save({**response, "status": "in_progress"})
                await generate(save)
            except asyncio.CancelledError:
                ticket.failed()
                save({**response, "status": "cancelled"})
            except Exception as exc:  # the client is gone: the failure goes into the stored response
                ticket.failed()
                logger.exception("A background response failed")
                error = {"code": "server_error", "message": getattr(exc, "message", str(exc))}
                save({**response, "status": "failed", "error": error})
            finally:
                ticket.release()
                self._tasks.pop(response["id"], None)

        save(response)
        self._tasks[response["id"]] = asyncio.create_task(run())

    def cancel(self, response_id: str) -> bool:
        """Stop a running background response; False if none is running under that id."""
        task = self._tasks.get(response_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def wait(self, response_id: str) -> None:
        task = self._tasks.get(response_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
