"""Keep-alive: how long an idle model stays loaded, and the task that unloads it when its time is up.

A model's time comes from, in order: the `keep_alive` of the last request that used it (Ollama's extension:
"10m", "30s", "1h30m", a number of seconds; 0 = unload when this request ends; negative = forever), its `ttl` in
models.yaml, `--model-ttl`. No time (the default) keeps it until it is evicted or unloaded. The clock starts when
the model's last request ends; a model in use is never unloaded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from backends.base import Engine
from backends.catalog import ModelEntry
from chat.templates import ChatPromptRenderer
from errors import InvalidRequest

logger = logging.getLogger(__name__)

REAP_INTERVAL_SECONDS = 0.5
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | float | int | None, param: str = "keep_alive") -> float | None:
    """Seconds, or None for "forever" (a negative value, or nothing given)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest(f"'{param}' must be a duration such as \"10m\" or a number of seconds.", param=param)
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    text = value.strip().lower()
    if text.startswith("-"):
        return None
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise InvalidRequest(f"'{param}' must be a duration such as \"10m\", \"1h30m\" or \"45s\"; got {value!r}.",
                             param=param)
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


@dataclass(eq=False)
class LoadedModel:
    entry: ModelEntry
    engine: Engine
    renderer: ChatPromptRenderer
    memory_bytes: int  # estimated weights + KV, what the memory budget counts
    load_seconds: float = 0.0
    leases: int = 0
    retired: bool = False  # being unloaded: takes no new requests
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float | None = None  # seconds it stays loaded once idle; None: until evicted or unloaded
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set once its memory is freed
    base_id: str | None = None  # an adapter model: the loaded model it runs on

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def model_id(self) -> str:
        return self.entry.id

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds until an idle model is unloaded (0: due); None while in use or kept forever."""
        if self.keep_alive is None or self.leases or self.retired:
            return None
        return max(0.0, self.last_used + self.keep_alive - (now if now is not None else time.monotonic()))


async def reap_expired(models: Callable[[], Iterable[LoadedModel]],
                       unload: Callable[[LoadedModel], Awaitable[None]]) -> None:
    """Forever: unload each idle model whose keep-alive ran out (cancel the task to stop)."""
    while True:
        for model in list(models()):
            if model.expires_in() == 0.0:
                logger.info("Unloading %s: idle for its keep-alive of %.0f s", model.model_id, model.keep_alive)
                await unload(model)
        await asyncio.sleep(REAP_INTERVAL_SECONDS)
