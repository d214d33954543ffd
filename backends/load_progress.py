"""How far a model load has come, for `/v1/models`, the SSE stream of `/admin/models/load`, the terminal chat's
`/switch` bar and the web page's bar.

The registry makes one LoadProgress per load and sets it in a context variable before building the engine in a
worker thread (`asyncio.to_thread` carries context variables along), so engines report without any of their
constructors taking it: llama.cpp through its progress callback (the fraction of tensor data read), transformers
by stage and by weights loaded (backends/hf/load_tracking.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

STEP = 0.01


@dataclass
class LoadProgress:
    fraction: float = 0.0  # 0..1; only ever grows
    stage: str = "starting"  # starting, weights, context, template, ready
    started: float = field(default_factory=time.monotonic)
    # every step of at least STEP or change of stage, in order: a stream sends each one even when the load is
    # faster than it polls (a page-cached GGUF loads in ~0.1 s)
    steps: list[tuple[float, str]] = field(default_factory=list)

    def report(self, fraction: float, stage: str | None = None) -> None:
        """Called from the loading thread; readers on the event loop see whole floats, strings and list items."""
        fraction = min(1.0, max(self.fraction, fraction))
        stage = stage or self.stage
        if not self.steps or fraction - self.steps[-1][0] >= STEP or stage != self.steps[-1][1]:
            self.steps.append((round(fraction, 3), stage))
        self.fraction, self.stage = fraction, stage

    def as_dict(self) -> dict:
        return {"progress": round(self.fraction, 3), "stage": self.stage,
                "elapsed_seconds": round(time.monotonic() - self.started, 2)}


_current: ContextVar[LoadProgress | None] = ContextVar("load_progress", default=None)


def current_load() -> LoadProgress | None:
    """The progress of the load running in this context, if any (engines built outside a load: None)."""
    return _current.get()


def report(fraction: float, stage: str | None = None) -> None:
    if (progress := _current.get()) is not None:
        progress.report(fraction, stage)


@contextmanager
def tracking(progress: LoadProgress) -> Iterator[LoadProgress]:
    token = _current.set(progress)
    try:
        yield progress
    finally:
        _current.reset(token)
