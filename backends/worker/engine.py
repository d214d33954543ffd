"""The server's side of an engine worker: an `Engine` whose model runs in a process of its own.

The serving path sees the same engine interface as ever; behind it every call and stream goes to the worker
(backends/worker/child.py) over a socket pair. A thread reads the worker's messages and hands each to whoever waits
for it: a stream's queue on the event loop, or a call's future. When the worker dies (a signal, a native abort,
the OOM killer) the reader sees its socket close at once: every call and stream in flight ends with
`EngineCrashed`, and `failure()` says what happened until the registry replaces the engine with a fresh worker.
Nothing of the model lives in this process, so ending the worker gives all of its memory back.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from backends.base import (
    AdapterSet,
    Engine,
    GenerationChunk,
    GenerationFinished,
    GenerationRequest,
    KvCacheUsage,
    Ranking,
    TokenDelta,
    Usage,
    WarmedPrompt,
    unfinished_usage,
)
from backends.catalog import ModelEntry
from backends.load_progress import current_load
from backends.step_outbox import deliver_soon
from backends.worker.log_relay import LogRelay
from backends.worker.wire import Channel, WorkerGone, decode_error
from errors import EngineCrashed, ModelLoadFailed
from settings import Settings

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_SECONDS = 60.0  # a blocking call (tokenize, a cache summary) the worker does not answer: it hangs
CLOSE_TIMEOUT_SECONDS = 120.0  # closing finishes the work in flight and queued cache writes first
CANCEL_REPORT_SECONDS = 2.0  # how long a stream left early waits for the worker's count of what it used
WATCH_INTERVAL_SECONDS = 0.5
_SECRET_SETTINGS = ("api_key", "admin_key", "api_key_file")  # a worker never needs the server's keys


class _End:
    """A stream's last message: the usage of a stream that ended before its GenerationFinished (or None)."""

    def __init__(self, usage: Usage | None) -> None:
        self.usage = usage


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.generating = False  # its tokens come (it holds a slot) and its end has not: counted as active

    def deliver(self, item) -> None:
        """From the reader thread: a list of chunks, an exception or the stream's end."""
        deliver_soon(self.loop, [(self.queue, item)])

    @staticmethod
    def deliver_many(items: list[tuple[_Stream, list]]) -> None:
        """From the reader thread: chunks for several streams (all on the server's one event loop)."""
        deliver_soon(items[0][0].loop, [(stream.queue, chunks) for stream, chunks in items])


class WorkerEngine(Engine):
    """One local model (llama.cpp or transformers, generative or not) served by its worker process."""

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        """Start the worker and load the model there (blocking: the registry calls it on a worker thread)."""
        self.entry = entry
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._failure: str | None = None
        self._closing = False
        self._stats = (0, 0, None, None)
        self._stall_seconds = settings.worker_stall_seconds
        self._heard_at: float | None = None  # its last message (none yet: it is still starting Python)
        self._moved_at = time.monotonic()  # its last step, or the last moment it had nothing to do
        self._stalled: str | None = None  # why the watchdog ended it
        self._kv_events: collections.deque[dict] = collections.deque()  # (--kv-events) until the publisher drains
        self._progress = current_load()
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        ours, theirs = socket.socketpair()
        # GGML_NO_BACKTRACE: a failed GGML_ASSERT otherwise forks gdb to print a backtrace first, which can take
        # seconds on a busy host (the worker looks hung meanwhile); the assert line itself says what failed.
        env = {"GGML_NO_BACKTRACE": "1", **os.environ, "LLM_SERVER_WORKER_LOG_LEVEL": settings.log_level,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backends.worker.child", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)  # a terminal's Ctrl-C is the server's to handle (it closes workers gracefully)
        theirs.close()
        self.logs = LogRelay(self.process.stdout, entry.id)
        self.channel = Channel(ours)
        threading.Thread(target=self._read_forever, name=f"worker-reader-{entry.id}", daemon=True).start()
        if self._stall_seconds:
            threading.Thread(target=self._watch, name=f"worker-watchdog-{entry.id}", daemon=True).start()
        without_keys = settings.model_copy(update={name: Settings.model_fields[name].default for name in _SECRET_SETTINGS})
        self.channel.send(("load", entry, without_keys))
        info = self._ready.result()  # the load's own error, or a ModelLoadFailed naming how the worker died
        self.engine_kind = info["engine_kind"]
        self.capabilities = info["capabilities"]
        self._context_length = info["context_length"]
        self._chat_template = info["chat_template"]
        self._weight_placement = info["weight_placement"]
        self.pid = info["pid"]
        if info["dimensions"] is not None:
            self.dimensions = info["dimensions"]  # (embedding models)
        logger.info("Model %s runs in worker process %d", entry.id, self.pid)

    # ---------------------------------------------------------------- the worker's messages

    def _read_forever(self) -> None:
        try:
            while True:
                message = self.channel.receive()
                self._heard_at = time.monotonic()
                self._handle(message)
        except WorkerGone:
            pass
        except Exception:  # a message this side cannot read: treat the worker as gone
            logger.exception("Unreadable message from the worker of %s", self.entry.id)
            self.process.kill()
        self._worker_gone()

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "chunks":  # one scheduler step's tokens: handed to the event loop in one wake-up, not one each
            _, batch, stats = message
            self._note_stats(stats)
            self._moved_at = self._heard_at
            ready = [(stream, chunks) for stream_id, chunks in batch if (stream := self._streams.get(stream_id))]
            for stream, _ in ready:
                stream.generating = True
            if ready:
                _Stream.deliver_many(ready)
        elif kind in ("stream_error", "stream_end"):
            if (stream := self._streams.get(message[1])) is not None:
                stream.generating = False
                stream.deliver(decode_error(message[2]) if kind == "stream_error" else _End(message[2]))
        elif kind in ("result", "error"):
            if (future := self._calls.pop(message[1], None)) is not None:
                if kind == "result":
                    future.set_result(message[2])
                else:
                    future.set_exception(decode_error(message[2]))
        elif kind == "stats":
            self._note_stats(message[1:])
        elif kind == "kv_events":
            self._kv_events.extend(message[1])
        elif kind == "progress":
            if self._progress is not None:
                self._progress.report(*message[1:])
        elif kind == "ready":
            self._ready.set_result(message[1])
        elif kind == "load_failed":
            self._ready.set_exception(decode_error(message[1]))

    def _note_stats(self, stats: tuple) -> None:
        active, queued, steps, _ = stats
        if steps != self._stats[2] or not (active or queued):  # it stepped, or it has nothing to do
            self._moved_at = self._heard_at
        self._stats = stats

    def _watch(self) -> None:
        """End a worker that hangs instead of dying: one silent for `worker_stall_seconds` (it beats every second),
        or one whose engine has work but has taken no step for as long. Ending it is then the crash path."""
        while self.process.poll() is None and self._failure is None and not self._closing:
            time.sleep(WATCH_INTERVAL_SECONDS)
            now = time.monotonic()
            if self._heard_at is None:
                continue
            if now - self._heard_at > self._stall_seconds:
                self._stalled = f"stopped answering (nothing from it for {now - self._heard_at:.0f} s)"
            elif now - self._moved_at > self._stall_seconds:
                self._stalled = f"made no progress for {now - self._moved_at:.0f} s with requests waiting on it"
            if self._stalled and not self._closing:
                logger.error("The worker of %s %s: ending it", self.entry.id, self._stalled)
                self.process.kill()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                self.channel.shut_down()  # (the reader sees the end now, even if a child of the worker kept the socket)
                return

    def _worker_gone(self) -> None:
        """The socket closed: a worker told to close is done; any other died. Fail everything waiting on it."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # its socket is gone but it lives on: it cannot serve, so end it
            self.process.kill()
            code = self.process.wait()
        self.logs.join(timeout=2)
        if self._closing and code == 0:
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        what = f"{self._stalled} and was ended ({how})" if self._stalled else f"died ({how})"
        tail = " | ".join(self.logs.tail())
        self._failure = f"The worker process of model '{self.entry.id}' {what}" + (
            f"; its last log lines: {tail}" if tail else "")
        logger.error("%s", self._failure)
        crashed = self._crashed()
        if not self._ready.done():
            self._ready.set_exception(ModelLoadFailed(f"Model '{self.entry.id}' failed to load: {self._failure}"))
        for future in list(self._calls.values()):
            if not future.done():
                future.set_exception(crashed)
        self._calls.clear()
        for stream in list(self._streams.values()):
            stream.deliver(crashed)

    # ---------------------------------------------------------------- calls

    def _start(self, message: tuple) -> concurrent.futures.Future:
        """Send `message` (its second item the call's id, filled in here); the future of its answer."""
        if self._failure is not None:
            raise self._crashed()
        call_id = next(self._ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls[call_id] = future
        try:
            self.channel.send((message[0], call_id, *message[1:]))
        except WorkerGone:
            self._calls.pop(call_id, None)
            raise self._crashed() from None
        return future

    def _crashed(self) -> EngineCrashed:
        """The error of a request the worker cannot serve: it died (or its socket is gone, the moment before the
        reader thread notices)."""
        failure = self._failure or f"The worker process of model '{self.entry.id}' is gone"
        return EngineCrashed(failure + ". The model restarts on its next request.")

    def _call_blocking(self, method: str, *args):
        return self._start(("call", method, args)).result(CALL_TIMEOUT_SECONDS)

    async def _call(self, method: str, *args):
        return await asyncio.wrap_future(self._start(("call", method, args)))

    def failure(self) -> str | None:
        return self._failure

    def worker_pid(self) -> int | None:
        return self.pid

    # ---------------------------------------------------------------- the engine interface

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def chat_template(self):
        return self._chat_template

    def count_tokens(self, text: str) -> int:
        return self._call_blocking("count_tokens", text)

    def tokenize(self, text: str) -> list[int]:
        return self._call_blocking("tokenize", text)

    def detokenize(self, tokens: list[int]) -> str:
        return self._call_blocking("detokenize", tokens)

    def infill_prompt(self, prefix: str, suffix: str) -> list[int] | None:
        return self._call_blocking("infill_prompt", prefix, suffix)

    def weight_placement(self) -> dict | None:
        return self._weight_placement

    # The worker's figures arrive with its messages; a stream that ended here is no longer counted even if its last
    # figures still did (they were taken while its last token was on its way), and a stream whose tokens are coming
    # is counted even before figures taken after its start arrive.
    def active_sequences(self) -> int:
        generating = sum(1 for stream in list(self._streams.values()) if stream.generating)
        return 0 if self._failure else min(max(self._stats[0], generating), len(self._streams))

    def queued_requests(self) -> int:
        return 0 if self._failure else min(self._stats[1], len(self._streams))

    def kv_cache_usage(self) -> KvCacheUsage | None:
        return None if self._failure else self._stats[3]

    def kv_events(self) -> list[dict]:
        events = []
        while self._kv_events:
            events.append(self._kv_events.popleft())
        return events

    def cache_summary(self, adapters: AdapterSet | None = None) -> dict | None:
        return None if self._failure else self._call_blocking("cache_summary", adapters)

    async def warm_prompt(self, prompt: str, conversation: str, adapters: AdapterSet | None = None) -> WarmedPrompt:
        return await self._call("warm_prompt", prompt, conversation, adapters)

    async def embed(self, inputs: list[str] | list[list[int]]):
        return await self._call("embed", inputs)

    async def rerank(self, query: str, documents: list[str]) -> Ranking:
        return await self._call("rerank", query, documents)

    def attach_adapters(self, model_id: str, adapters: tuple) -> AdapterSet:
        return self._call_blocking("attach_adapters", model_id, adapters)

    def detach_adapters(self, adapters: AdapterSet) -> None:
        if self._failure is None:
            self._call_blocking("detach_adapters", adapters)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        stream = _Stream(asyncio.get_running_loop())
        stream_id = next(self._ids)
        self._streams[stream_id] = stream
        sent, finished, ended = 0, False, None
        try:
            if self._failure is not None:
                raise self._crashed()
            try:
                self.channel.send(("generate", stream_id, request))
            except WorkerGone:
                raise self._crashed() from None
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, _End):  # the worker's stream ended without its GenerationFinished
                    ended = item
                    return
                for chunk in item:
                    if isinstance(chunk, TokenDelta):
                        sent = chunk.completion_tokens
                    finished = isinstance(chunk, GenerationFinished)
                    yield chunk
                    if finished:
                        return
        finally:
            usage = ended.usage if ended else None
            if not finished and not ended and self._failure is None:
                # Shielded: a client gone cancels the request's scope, and anyio (Starlette's) would cancel every
                # await here again; the worker's count of what the stream used arrives within milliseconds.
                with anyio.CancelScope(shield=True):
                    usage = await self._cancel(stream_id, stream)
            self._streams.pop(stream_id, None)
            if not finished and (report := unfinished_usage.get()) is not None:
                report(usage or Usage(prompt_tokens=0, completion_tokens=sent))

    async def _cancel(self, stream_id: int, stream: _Stream) -> Usage | None:
        """Stop a stream left early in the worker; what it used, as the worker's engine counted it."""
        try:
            self.channel.send(("cancel", stream_id))
        except WorkerGone:
            return None
        try:
            async with asyncio.timeout(CANCEL_REPORT_SECONDS):
                while True:
                    item = await stream.queue.get()
                    if isinstance(item, _End):
                        return item.usage
                    if isinstance(item, Exception):
                        return None
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        """Let the worker finish its work and cache writes, then end it: all of the model's memory goes with it."""
        self._closing = True
        if self._failure is None and self.process.poll() is None:
            try:
                future = self._start(("close",))
                await asyncio.wait_for(asyncio.wrap_future(future), CLOSE_TIMEOUT_SECONDS)
            except (EngineCrashed, TimeoutError):
                logger.warning("The worker of %s did not close in time; ending it", self.entry.id)
        await asyncio.to_thread(self._end_process)

    def _end_process(self) -> None:
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.channel.close()
