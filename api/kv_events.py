"""KV-cache events for KV-aware routers (`--kv-events ENDPOINT`), in vLLM's wire format.

A ZMQ PUB socket bound on the endpoint; each message is three frames: a topic (empty), an 8-byte big-endian
sequence number, and a msgpack batch `[timestamp, [event, ...], data_parallel_rank]`, each event a map tagged by
its `type`: `BlockStored` (`block_hashes`, `parent_block_hash`, `token_ids`, `block_size`, `lora_id`, `medium`,
`lora_name`), `BlockRemoved` (`block_hashes`, `medium`), `AllBlocksCleared`. vllm-router 0.1.17's subscriber
reads exactly this (it refuses array-encoded events and events without `lora_name`), then matches each request's
tokens, which it asks for at `/v1/chat/completions/render`, against the blocks each replica holds.

The engines keep the ledger of what they hold (backends/llamacpp/block_ledger.py); this task collects their
events every `INTERVAL_SECONDS` and publishes them. It also remembers what each engine announced, so an engine
that goes away (unloaded, or crashed and replaced) has all of its blocks removed at once.
"""

from __future__ import annotations

import asyncio
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


class KvEventPublisher:
    def __init__(self, endpoint: str, registry: ModelRegistry) -> None:
        self.registry = registry
        self._socket = zmq.Context.instance().socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        self._sequence = 0
        self._announced: dict[int, tuple[Engine, set[int]]] = {}  # id(engine) -> (engine, hashes it holds)
        logger.info("Publishing KV-cache events on %s", endpoint)

    async def run(self) -> None:
        self.publish([{"type": "AllBlocksCleared"}])  # whatever a router knew of an earlier run of this replica
        while True:
            await asyncio.sleep(INTERVAL_SECONDS)
            try:
                if events := self.collect():
                    self.publish(events)
            except Exception:  # events are a routing hint: never let them take the server down
                logger.exception("Could not publish KV-cache events")

    def collect(self) -> list[dict]:
        events: list[dict] = []
        live = {id(model.engine): model.engine for model in self.registry.residency.models}
        for key, engine in live.items():
            held = self._announced.setdefault(key, (engine, set()))[1]
            for event in engine.kv_events():
                if event["type"] == "BlockStored":
                    held.update(event["block_hashes"])
                elif event["type"] == "BlockRemoved":
                    held.difference_update(event["block_hashes"])
                events.append(event)
        for key in set(self._announced) - set(live):
            _, held = self._announced.pop(key)
            if held:
                events.append({"type": "BlockRemoved", "block_hashes": sorted(held), "medium": MEDIUM})
        return events

    def publish(self, events: list[dict]) -> None:
        batch = msgpack.packb([time.time(), events, 0])
        self._socket.send_multipart([b"", struct.pack(">Q", self._sequence), batch])
        self._sequence += 1

    def close(self) -> None:
        self._socket.close()
