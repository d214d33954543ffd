"""An engine worker: one local model's engine in a process of its own (`python -m backends.worker.child FD`).

The server (backends/worker/engine.py) starts it with one end of a socket pair and sends `("load", entry,
settings)`; the worker builds the engine exactly as the server would have in-process, reports load progress,
then serves the engine interface until told to close or until the server's end of the socket goes away:

    server -> worker                      worker -> server
    ("call", id, method, args)            ("result", id, value) | ("error", id, error)
    ("generate", id, request)             ("chunks", [(id, [chunk, ...]), ...], (active, queued))
    ("cancel", id)                        ("stream_error", id, error), ("stream_end", id, usage or None)
    ("close", id)                         ("progress", fraction, stage), ("ready", info),
                                          ("stats", active, queued, steps taken, KV usage), ("kv_events", [event, ...])

Everything the engine does happens on this process's event loop, as it would in the server's. The chunks of all
streams that arrive in one turn of the loop (one scheduler step's tokens) leave as one message. Logging goes to
stderr as `LEVEL logger: message` lines, which the server relays into its own log under the model's name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import sys
import threading

from backends.base import AdapterSet, Engine, GenerationRequest, KvCacheUsage, unfinished_usage
from backends.factory import build_local_engine
from backends.load_progress import LoadProgress, tracking
from backends.worker.wire import Channel, WorkerGone, encode_error

logger = logging.getLogger(__name__)

STATS_INTERVAL_SECONDS = 0.05
BEAT_SECONDS = 1.0  # the figures go out at least this often, changed or not: the server's watchdog hears it alive
# Methods of the engine the server may call by name (anything else is refused)
CALLABLE = frozenset({"count_tokens", "tokenize", "detokenize", "infill_prompt", "cache_summary", "warm_prompt",
                      "embed", "rerank", "weight_placement"})


class _RelayedProgress(LoadProgress):
    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def report(self, fraction: float, stage: str | None = None) -> None:
        super().report(fraction, stage)
        self._channel.send(("progress", self.fraction, self.stage))


class EngineWorker:
    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.loop = loop
        self.engine: Engine | None = None
        self.streams: dict[int, asyncio.Task] = {}
        self.adapter_sets: dict[str, AdapterSet] = {}  # key -> the engine's own set (its handles stay here)
        self._pending_chunks: dict[int, list] = {}
        self._flush_scheduled = False
        self._stats = (0, 0, None, None)
        self.closed = asyncio.Event()

    # ---------------------------------------------------------------- loading

    async def load(self, entry, settings) -> None:
        progress = _RelayedProgress(self.channel)
        try:
            with tracking(progress):
                self.engine = await asyncio.to_thread(build_local_engine, entry, settings)
        except Exception as exc:
            logger.debug("load failed", exc_info=True)
            self.channel.send(("load_failed", encode_error(exc)))
            self.closed.set()
            return
        engine = self.engine
        self.channel.send(("ready", {
            "engine_kind": engine.engine_kind, "capabilities": engine.capabilities,
            "context_length": engine.context_length, "chat_template": engine.chat_template,
            "weight_placement": engine.weight_placement(), "dimensions": getattr(engine, "dimensions", None),
            "pid": os.getpid(),
        }))

    # ---------------------------------------------------------------- messages

    def dispatch(self, message: tuple) -> None:
        kind = message[0]
        if kind == "load":
            asyncio.create_task(self.load(*message[1:]))
        elif kind == "generate":
            _, stream_id, request = message
            self.streams[stream_id] = asyncio.create_task(self._stream(stream_id, request))
        elif kind == "cancel":
            if (task := self.streams.get(message[1])) is not None:
                task.cancel()
        elif kind == "call":
            asyncio.create_task(self._call(*message[1:]))
        elif kind == "close":
            asyncio.create_task(self._close(message[1]))

    async def _call(self, call_id: int, method: str, args: tuple) -> None:
        try:
            if method == "attach_adapters":
                adapters = await asyncio.to_thread(self.engine.attach_adapters, *args)
                self.adapter_sets[adapters.key] = adapters
                result = AdapterSet(model_id=adapters.model_id, key=adapters.key)
            elif method == "detach_adapters":
                adapters = self.adapter_sets.pop(args[0].key, None)
                result = await asyncio.to_thread(self.engine.detach_adapters, adapters) if adapters else None
            elif method in CALLABLE:
                result = getattr(self.engine, method)(*(self._own(arg) for arg in args))
                if asyncio.iscoroutine(result):
                    result = await result
            else:
                raise AttributeError(f"the worker does not serve {method!r}")
        except Exception as exc:
            self.channel.send(("error", call_id, encode_error(exc)))
        else:
            self.channel.send(("result", call_id, result))

    def _own(self, value):
        """An adapter set as the server knows it (model id and key) -> the engine's own, with its handles."""
        if isinstance(value, AdapterSet):
            return self.adapter_sets.get(value.key, value)
        return value

    async def _stream(self, stream_id: int, request: GenerationRequest) -> None:
        unfinished: list = []
        unfinished_usage.set(unfinished.append)  # (this task's own context) the usage of a stream left early
        if request.adapters is not None:
            request = dataclasses.replace(request, adapters=self._own(request.adapters))
        try:
            async for chunk in self.engine.generate(request):
                self._pending_chunks.setdefault(stream_id, []).append(chunk)
                self._schedule_flush()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._flush()
            self.channel.send(("stream_error", stream_id, encode_error(exc)))
        finally:
            self.streams.pop(stream_id, None)
            self._flush()
            self.channel.send(("stream_end", stream_id, unfinished[-1] if unfinished else None))
            self._stats = self._engine_stats()
            self.channel.send(("stats", *self._stats))

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending_chunks:
            batch, self._pending_chunks = list(self._pending_chunks.items()), {}
            self._stats = self._engine_stats()
            self.channel.send(("chunks", batch, self._stats))

    def _engine_stats(self) -> tuple[int, int, int | None, KvCacheUsage | None]:
        if self.engine is None:  # (loading)
            return 0, 0, None, None
        return (self.engine.active_sequences(), self.engine.queued_requests(), self.engine.steps_taken(),
                self.engine.kv_cache_usage())

    async def report_stats(self) -> None:
        """Sequences, queue and steps as they change while no chunk carries them (a request waiting for a slot, a
        long prompt being evaluated), and once a second regardless: the beat the server's watchdog listens for."""
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        while not self.closed.is_set():
            await asyncio.sleep(STATS_INTERVAL_SECONDS)
            stats = self._engine_stats()
            # (the KV usage moves with every token: it rides along, never a reason to send on its own)
            if stats[:3] != self._stats[:3] or loop.time() - sent_at >= BEAT_SECONDS:
                self._stats, sent_at = stats, loop.time()
                self.channel.send(("stats", *stats))
            if self.engine is not None and (events := self.engine.kv_events()):
                self.channel.send(("kv_events", events))

    async def _close(self, call_id: int) -> None:
        try:
            if self.engine is not None:
                await self.engine.aclose()
        finally:
            self.channel.send(("result", call_id, None))
            self.closed.set()


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=os.environ.get("LLM_SERVER_WORKER_LOG_LEVEL", "INFO").upper(), handlers=[handler],
                        force=True)


async def _serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # a process the engine starts (a debugger, a tool) must not keep it open
    channel = Channel(sock)
    worker = EngineWorker(channel, loop)

    def read_forever() -> None:
        try:
            while True:
                loop.call_soon_threadsafe(worker.dispatch, channel.receive())
        except WorkerGone:
            os._exit(0)  # the server is gone: nobody is left to serve

    threading.Thread(target=read_forever, name="worker-reader", daemon=True).start()
    beats = asyncio.create_task(worker.report_stats())
    await worker.closed.wait()
    beats.cancel()


def main(argv: list[str]) -> None:
    _configure_logging()
    asyncio.run(_serve(int(argv[0])))
    sys.stdout.flush()
    os._exit(0)  # (threads a library left behind must not keep a closed worker alive)


if __name__ == "__main__":
    main(sys.argv[1:])
