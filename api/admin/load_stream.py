"""`POST /admin/models/load` with `"stream": true`: the load's progress as Server-Sent Events.

`event: progress` each time the fraction or the stage moves (`{"model", "status": "loading", "progress" 0..1,
"stage", "elapsed_seconds"}`, checked every PROGRESS_INTERVAL), then one `event: loaded` with the same body as the
non-streaming answer, or `event: error` with an OpenAI error object. A client that goes away does not stop the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from api.error_responses import error_body
from api.sse import sse_event
from backends.catalog import ModelEntry
from backends.registry import ModelRegistry
from errors import ServerError

PROGRESS_INTERVAL = 0.1


async def load_events(registry: ModelRegistry, entry: ModelEntry,
                      final_body: Callable[[], dict]) -> AsyncIterator[dict]:
    load = asyncio.ensure_future(registry.ensure_loaded(entry.id))
    load.add_done_callback(lambda task: task.cancelled() or task.exception())  # read even if the client left
    await asyncio.sleep(0)  # the load task's first step registers the load, and with it its progress
    sent, progress = 0, None
    while True:
        done = load.done()  # looked at first: steps reported before the load ended are all sent below
        progress = progress or registry.load_progress(entry.id)  # kept: the registry forgets it when done
        if progress is not None:
            elapsed = progress.as_dict()["elapsed_seconds"]
            for fraction, stage in progress.steps[sent:]:
                yield sse_event({"model": entry.id, "status": "loading", "progress": fraction, "stage": stage,
                                 "elapsed_seconds": elapsed}, "progress")
            sent = len(progress.steps)
        if done:
            break
        await asyncio.wait({load}, timeout=PROGRESS_INTERVAL)
    try:
        load.result()
    except ServerError as exc:
        yield sse_event(error_body(exc), "error")
        return
    yield sse_event(final_body(), "loaded")
