"""The KV-event publisher's replay socket (api/kv_events.py) against a DEALER client asking as vllm-router does:
the batches from a sequence number on, in vLLM's frames, then the end marker; and the repeat of the last batch
that lets a router which connected late notice it missed something."""

from __future__ import annotations

import struct
import time
from types import SimpleNamespace

import msgpack
import zmq

from api.kv_events import END_OF_REPLAY, KvEventPublisher
from tests.server_process import free_port


def test_a_late_subscriber_gets_the_batches_it_missed_from_the_replay_socket():
    live, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    publisher = KvEventPublisher(live, SimpleNamespace(residency=SimpleNamespace(models=[])), replay)
    try:
        for index in range(3):
            publisher.publish([{"type": "BlockRemoved", "block_hashes": [index], "medium": "GPU"}])
        subscriber = zmq.Context.instance().socket(zmq.SUB)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber.connect(live)
        time.sleep(0.3)  # (a PUB socket drops what it sends before the subscription arrives)
        publisher.repeat_last()
        topic, sequence, batch = subscriber.recv_multipart()
        assert struct.unpack(">Q", sequence)[0] == 2 and msgpack.unpackb(batch)[1][0]["block_hashes"] == [2]
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.connect(replay)
        dealer.send_multipart([b"", struct.pack(">Q", 1)])
        deadline, frames = time.monotonic() + 5, []
        while time.monotonic() < deadline and (not frames or frames[-1][2] != END_OF_REPLAY):
            publisher.answer_replays()
            if dealer.poll(50):
                frames.append(dealer.recv_multipart())
        assert [len(f) for f in frames] == [4, 4, 4] and all(f[0] == b"" and f[1] == b"" for f in frames)
        assert [struct.unpack(">Q", f[2])[0] for f in frames[:2]] == [1, 2] and frames[2][3] == b""
        assert [msgpack.unpackb(f[3])[1][0]["block_hashes"] for f in frames[:2]] == [[1], [2]]
        dealer.close()
        subscriber.close()
    finally:
        publisher.close()
