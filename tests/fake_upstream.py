"""A tiny OpenAI-shaped ASGI upstream for the faults a real server cannot be made to produce on demand: a slow
first byte, a stream that dies midway, 500s, paced chunks, a Responses API with its own stored conversations, and
a record of what it received (headers, bodies, streams whose client went away). Runs in a thread of the test process on a free loopback port.

Behaviour is chosen per request by the `model` name: `slow-first-byte`, `dies-midway`, `fails-500`,
`rejects-400`, `paced` (chunks 0.5 s apart), `endless` (a chunk every 50 ms until the client leaves); anything
else streams or answers a few chunks at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.server_process import free_port

MODELS = ["echo", "slow-first-byte", "dies-midway", "fails-500", "rejects-400", "paced", "endless"]


@dataclass
class Record:
    requests: list[dict] = field(default_factory=list)  # {"path", "headers", "body"}
    cancelled_streams: int = 0


def _chunk(model: str, index: int, text: str, finish: str | None = None) -> str:
    body = {"id": "fake-1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def build_app(record: Record, tokens: int = 5, interval: float = 0.0) -> Starlette:
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})

    async def chat(request: Request):
        body = await request.json()
        record.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        model = body.get("model")
        if model == "fails-500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        if model == "rejects-400":
            return JSONResponse({"error": {"message": "temperature too hot", "type": "invalid_request_error",
                                           "param": "temperature", "code": "bad_temperature"}}, status_code=400)
        if model == "slow-first-byte":
            await asyncio.sleep(3)
        if not body.get("stream"):
            words = [f"w{i} " for i in range(tokens)]
            return JSONResponse({"id": "fake-1", "object": "chat.completion", "created": 1, "model": model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "".join(words)}}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens}})

        async def events():
            try:
                count = 10**9 if model == "endless" else tokens
                for index in range(count):
                    if model == "dies-midway" and index == 2:
                        raise RuntimeError("upstream crashed")  # uvicorn drops the connection mid-body
                    yield _chunk(model, index, f"w{index} ")
                    pause = 0.5 if model == "paced" else 0.05 if model == "endless" else interval
                    if pause:
                        await asyncio.sleep(pause)
                yield _chunk(model, tokens, "", "stop")
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                record.cancelled_streams += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    async def other(request: Request):
        body = await request.json()
        record.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        if request.url.path.endswith("embeddings"):
            return JSONResponse({"object": "list", "model": body.get("model"),
                                 "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]})
        if request.url.path.endswith("rerank"):
            return JSONResponse({"id": "rr-1", "model": body.get("model"),
                                 "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}],
                                 "usage": {"prompt_tokens": 7, "total_tokens": 7}})
        return JSONResponse({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": body.get("model"),
                             "choices": [{"index": 0, "text": "done", "finish_reason": "stop"}]})

    async def responses(request: Request):
        """A Responses API upstream keeps its own conversations: any `previous_response_id` is its own to know."""
        body = await request.json()
        record.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        text = f"continues {body['previous_response_id']}" if body.get("previous_response_id") else "w0"
        return JSONResponse({
            "id": "resp_upstream_2", "object": "response", "created_at": 1, "model": body.get("model"),
            "status": "completed", "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "previous_response_id": body.get("previous_response_id"),
            "output": [{"type": "message", "id": "msg_upstream_2", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}]})

    return Starlette(routes=[
        Route("/v1/models", models),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", other, methods=["POST"]),
        Route("/v1/embeddings", other, methods=["POST"]),
        Route("/v1/rerank", other, methods=["POST"]),
    ])


class FakeUpstream:
    """Serves `build_app` on a free port in a background thread."""

    def __init__(self, tokens: int = 5, interval: float = 0.0) -> None:
        self.record = Record()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(build_app(self.record, tokens, interval), host="127.0.0.1", port=self.port,
                                log_level="error", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FakeUpstream:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("fake upstream did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


if __name__ == "__main__":  # a standalone upstream for benchmarks: python -m tests.fake_upstream PORT TOKENS INTERVAL
    import sys

    port, tokens, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    uvicorn.run(build_app(Record(), tokens, interval), host="127.0.0.1", port=port, log_level="error", lifespan="off")
