"""Which models stay loaded: the registry's loaded models, the memory promised to loads in progress, and what is
unloaded to make room for the next one.

Residency is bounded by `--max-loaded-models` and `--memory-budget` (estimated weights + KV): to make room the
least recently used idle model goes first; when all are busy the first to go idle goes, and after
EVICTION_PATIENCE_SECONDS the least recently used is drained (no new requests; unloaded when its last finishes).
Remote models and adapter models (views of a loaded base) take no room. A model whose keep-alive ran out is
unloaded by a background task (keep_alive.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from backends.catalog import ModelEntry
from backends.keep_alive import LoadedModel, reap_expired
from backends.memory import physical_memory_bytes
from errors import ModelTooLarge
from settings import Settings

logger = logging.getLogger(__name__)

# When every resident model is busy, how long a load waits for one to go idle before it drains the least
# recently used (stops giving it new requests): bounded, so a constantly busy model cannot starve a load.
EVICTION_PATIENCE_SECONDS = 5.0


class Residency:
    """Owned by the registry: it admits each model it loaded, asks for room before a load, and unloads through it."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        # Read at each decision rather than kept: the registry's settings may be replaced while it runs.
        self._settings = settings
        self._models: dict[str, LoadedModel] = {}  # loaded, and being unloaded (retired) until they are gone
        # memory promised to loads in progress, and each load's task (a load that needs room may wait for it)
        self._reserved: dict[str, tuple[int, asyncio.Task]] = {}
        self._deciding = asyncio.Lock()  # one load at a time decides what to evict and reserves memory
        self._reaper: asyncio.Task | None = None  # unloads models whose keep-alive ran out

    # ---------------------------------------------------------------- what is resident

    def resident(self, model_id: str) -> LoadedModel | None:
        """The model with this id while it holds memory, retired (being unloaded) or not."""
        return self._models.get(model_id)

    @property
    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def admit(self, model: LoadedModel) -> None:
        """A load finished: the model is resident (its reservation was released by then)."""
        self._models[model.model_id] = model

    def memory_budget(self) -> int:
        return self._settings().memory_budget or int(physical_memory_bytes() * 0.8)

    def memory_in_use(self) -> int:
        return (sum(m.memory_bytes for m in self._models.values())
                + sum(needed for needed, _ in self._reserved.values()))

    # ---------------------------------------------------------------- room for a load

    async def reserve(self, entry: ModelEntry, needed: int) -> None:
        """Make room for `entry` and promise it `needed` bytes. Called from the load's own task: later loads that
        need room wait for that task to end (the model is resident then, or the load failed and gave it back)."""
        async with self._deciding:
            await self._make_room(entry, needed)
            self._reserved[entry.id] = (needed, asyncio.current_task())

    def release(self, model_id: str) -> int:
        """Give back the reservation of a load that ended (loaded or failed); the bytes it had (0: none)."""
        needed, _ = self._reserved.pop(model_id, (0, None))
        return needed

    async def _make_room(self, entry: ModelEntry, needed: int) -> None:
        """Unload least recently used models until `entry` fits the model count and memory budget."""
        budget = self.memory_budget()
        if needed > budget:
            raise ModelTooLarge(
                f"Model '{entry.id}' needs about {needed / 2**20:.0f} MiB (weights + KV cache), more than the "
                f"memory budget of {budget / 2**20:.0f} MiB (--memory-budget). Lower its n_ctx or raise the budget."
            )
        while True:
            local = [m for m in self._models.values() if m.entry.engine != "remote" and m.base_id is None]
            count = len(local) + len(self._reserved)
            if count < self._settings().max_loaded_models and self.memory_in_use() + needed <= budget:
                return
            candidates = [m for m in local if not m.retired]
            idle = [m for m in candidates if m.leases == 0]
            if idle or candidates:
                if not idle and await self._first_idle(candidates):
                    continue  # one finished its requests: evict that one (next round)
                victim = min(idle or candidates, key=lambda m: m.last_used)
                logger.info("Unloading %s to make room for %s", victim.model_id, entry.id)
                await self.unload(victim)  # a busy victim takes no new requests and goes when they finish
                continue
            # Only models being unloaded, or loads that already reserved their room, hold it: wait for one.
            gone = [asyncio.ensure_future(m.gone.wait()) for m in self._models.values()]
            loads = [load for _, load in self._reserved.values()]
            if not gone and not loads:
                return
            await asyncio.wait(gone + loads, return_when=asyncio.FIRST_COMPLETED)
            for waiter in gone:
                waiter.cancel()

    @staticmethod
    async def _first_idle(models: list[LoadedModel]) -> bool:
        """Wait (a bounded time) for any of the busy models to finish its requests."""
        waiters = [asyncio.ensure_future(m.idle.wait()) for m in models]
        done, pending = await asyncio.wait(waiters, timeout=EVICTION_PATIENCE_SECONDS,
                                           return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        return bool(done)

    # ---------------------------------------------------------------- unloading

    async def unload(self, model: LoadedModel) -> None:
        """Retire `model` (no new requests), unload the adapter models running on it, then free it once its
        in-flight requests finish. Unloading one already being unloaded waits for that."""
        if model.retired:
            await model.gone.wait()
            return
        model.retired = True  # from here no new lease; requests already holding it finish first
        try:
            for dependent in self._dependents(model):  # adapters on it go first (their requests run on it)
                await self.unload(dependent)
            await model.idle.wait()
            await model.engine.aclose()
        finally:
            self._models.pop(model.model_id, None)
            model.gone.set()
        logger.info("Unloaded model %s", model.model_id)

    def _dependents(self, model: LoadedModel) -> list[LoadedModel]:
        """Adapter models running on `model`."""
        return [m for m in self._models.values() if m.base_id == model.model_id]

    async def unload_all(self) -> None:
        for model in list(self._models.values()):
            await self.unload(model)

    # ---------------------------------------------------------------- keep-alive

    def start_reaping(self) -> None:
        """Start unloading models whose keep-alive ran out (needs the event loop)."""
        self._reaper = asyncio.create_task(reap_expired(lambda: self._models.values(), self.unload))

    def stop_reaping(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
