"""KV-cache events for KV-aware routers (`--kv-events ENDPOINT`), in vLLM's wire format.

A ZMQ PUB socket bound on the endpoint; each message is three frames: a topic (empty), an 8-byte big-endian
sequence number, and a msgpack batch `[timestamp, [event, ...], data_parallel_rank]`, each event a map tagged by
its `type`: `BlockStored` (`block_hashes`, `parent_block_hash`, `token_ids`, `block_size`, `lora_id`, `medium`,
`lora_name`), `BlockRemoved` (`block_hashes`, `medium`), `AllBlocksCleared`. Two media: `GPU` for what the
engine's context holds (vLLM's name for its own KV, wherever it lives) and `DISK` for the states in the disk prompt
cache (backends/llamacpp/disk_blocks.py), which the router credits less (`--kv-penalty-disk`). vllm-router 0.1.17's
subscriber reads exactly this (it refuses array-encoded events and events without `lora_name`), then matches each
request's tokens, which it asks for at `/v1/chat/completions/render`, against the blocks each replica holds.

The engines keep the ledger of what they hold (backends/llamacpp/block_ledger.py); this task collects their
events every `INTERVAL_SECONDS` and publishes them. It also remembers what each engine announced, so an engine
that goes away (unloaded, or crashed and replaced) has all of its blocks removed at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time

import msgpack
import zmq

from backends.base import Engine
from backends.llamacpp.block_ledger import MEDIUM
from backends.registry import ModelRegistry

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.05
REPLAY_BATCHES = 10_000  # (vLLM's buffer_steps)
HEARTBEAT_SECONDS = 1.0
END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)
TOPIC = b""  # (every batch goes out under the empty topic, as vLLM's default)


class KvEventPublisher:
    def __init__(self, endpoint: str, registry: ModelRegistry, replay_endpoint: str | None = None) -> None:
        self.registry = registry
        self._socket = zmq.Context.instance().socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        # A PUB socket drops what it sends while nobody listens: a router that starts (or reconnects) later asks
        # the replay socket for the batches from a sequence number on, as vLLM's publisher answers it.
        self._replay = None
        self._sent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=REPLAY_BATCHES)
        if replay_endpoint:
            self._replay = zmq.Context.instance().socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(replay_endpoint)
            logger.info("Answering KV-cache event replay requests on %s", replay_endpoint)
        self._sequence = 0
        # id(engine) -> (engine, {medium: hashes it holds there}): GPU for live KV, DISK for the disk prompt cache
        self._announced: dict[int, tuple[Engine, dict[str, set[int]]]] = {}
        logger.info("Publishing KV-cache events on %s", endpoint)

    async def run(self) -> None:
        self.publish([{"type": "AllBlocksCleared"}])  # whatever a router knew of an earlier run of this replica
        while True:
            await asyncio.sleep(INTERVAL_SECONDS)
            try:
                if events := self.collect():
                    self.publish(events)
                elif self._replay is not None and time.monotonic() - self._published_at >= HEARTBEAT_SECONDS:
                    self.repeat_last()
                self.answer_replays()
            except Exception:  # events are a routing hint: never let them take the server down
                logger.exception("Could not publish KV-cache events")

    def collect(self) -> list[dict]:
        events: list[dict] = []
        live = {id(model.engine): model.engine for model in self.registry.residency.models}
        for key, engine in live.items():
            held = self._announced.setdefault(key, (engine, {}))[1]
            for event in engine.kv_events():
                if event["type"] == "BlockStored":
                    held.setdefault(event.get("medium", MEDIUM), set()).update(event["block_hashes"])
                elif event["type"] == "BlockRemoved":
                    held.setdefault(event.get("medium", MEDIUM), set()).difference_update(event["block_hashes"])
                events.append(event)
        for key in set(self._announced) - set(live):
            _, held = self._announced.pop(key)
            events.extend({"type": "BlockRemoved", "block_hashes": sorted(hashes), "medium": medium}
                          for medium, hashes in held.items() if hashes)
        return events

    def publish(self, events: list[dict]) -> None:
        batch = msgpack.packb([time.time(), events, 0])
        self._socket.send_multipart([TOPIC, struct.pack(">Q", self._sequence), batch])
        if self._replay is not None:
            self._sent.append((self._sequence, batch))
        self._sequence += 1
        self._published_at, self._last_batch = time.monotonic(), batch

    def repeat_last(self) -> None:
        """The last batch again, while nothing happens: a router that connected since learns from it how far
        behind it is (and asks for a replay), one that is up to date ignores it (vllm-router 0.1.17 does both,
        measured). The same content, not an empty batch: a router that takes this sequence number as received
        skips it in the replay."""
        self._socket.send_multipart([TOPIC, struct.pack(">Q", self._sequence - 1), self._last_batch])
        self._published_at = time.monotonic()

    def answer_replays(self) -> None:
        """Each request is [client, b"", first sequence wanted (8 bytes, big-endian)]; the answer, every kept batch
        from there as [client, b"", topic, sequence, batch], then [client, b"", topic, -1, b""] (vLLM's frames;
        vllm-router drops a replay without the topic frame)."""
        while self._replay is not None and self._replay.poll(0):
            frames = self._replay.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                logger.warning("Ignoring a malformed KV-event replay request (%d frames)", len(frames))
                continue
            client, start = frames[0], struct.unpack(">Q", frames[2])[0]
            replayed = [(sequence, batch) for sequence, batch in self._sent if sequence >= start]
            for sequence, batch in replayed:
                self._replay.send_multipart([client, b"", TOPIC, struct.pack(">Q", sequence), batch])
            self._replay.send_multipart([client, b"", TOPIC, END_OF_REPLAY, b""])
            logger.info("Replayed %d KV-event batches from sequence number %d", len(replayed), start)

    def close(self) -> None:
        self._socket.close()
        if self._replay is not None:
            self._replay.close()
