"""Runs the `n` choices of one request side by side and merges their chunks into one ordered stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import aclosing

from backends.base import GenerationChunk
from errors import GenerationTimeout

_DONE = object()


async def merge_choices(streams: list[AsyncIterator[GenerationChunk]]) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """Yield (choice index, chunk) as chunks arrive. The first error from any choice is raised; closing the
    merged iterator early cancels every choice (and so frees their engine slots)."""
    if len(streams) == 1:
        # aclosing: an async for does not close its iterator when we are closed early; the engine must know.
        async with aclosing(streams[0]) as stream:
            async for chunk in stream:
                yield 0, chunk
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, _DONE))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def consume_unless_disconnected(chunks: AsyncIterator, consume, receive) -> bool:
    """Feed every chunk to `consume`. A client that hangs up first cancels the generation (its slot is freed
    for others) and the answer is False. An engine error is raised."""

    async def collect() -> None:
        async for chunk in chunks:
            consume(chunk)

    collecting = await _unless_disconnected(collect(), chunks, receive)
    if collecting.cancelled():
        return False
    collecting.result()
    return True


async def first_unless_disconnected(chunks: AsyncIterator, receive):
    """The first chunk of a stream, or None when the client hangs up before it arrives: a request still waiting
    for a free slot then leaves the queue at once and its prompt is never evaluated. An engine error is raised."""

    async def next_chunk():
        return await anext(chunks)

    first = await _unless_disconnected(next_chunk(), chunks, receive)
    return None if first.cancelled() else first.result()


async def _unless_disconnected(work: Coroutine, chunks: AsyncIterator, receive) -> asyncio.Task:
    """Run `work` (which reads `chunks`) until it ends or the client hangs up; then it is cancelled and `chunks`
    closed, which cancels the generation. The task, done or cancelled."""
    task = asyncio.create_task(work)
    disconnected = asyncio.create_task(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await chunks.aclose()
    return task


async def wait_for_disconnect(receive) -> None:
    """Return when the ASGI client disconnects (the request body has already been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def with_deadline(chunks: AsyncIterator, seconds: float) -> AsyncIterator:
    """Pass chunks through until `seconds` after the start; then stop the generation and raise a 504."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                item = await asyncio.wait_for(anext(chunks), max(remaining, 0.001))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise GenerationTimeout(
                    f"The request took longer than this server's limit of {seconds:g} s (--request-timeout)."
                ) from None
            yield item
    finally:
        await chunks.aclose()
