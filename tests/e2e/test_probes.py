"""Probes for orchestrators and routers: `/livez` is 200 whenever the server answers, through a model's load too;
`/readyz` is /health's answer for the default model, and `/readyz?model=` says whether one named model can serve now
(503 `model_loading` while it loads, `model_not_loaded` before, 404 unknown), never loading it. The load watched is a
transformers checkpoint's: its new worker process imports torch first, so it lasts seconds."""

from __future__ import annotations

import time

import httpx

from backends.embedded_model import GEMMA_FILE
from tests.server_process import running_server
from tests.tiny_hf_model import build_tiny_llama


def test_liveness_holds_through_a_load_and_readiness_follows_each_model(tmp_path):
    models = tmp_path / "models"
    build_tiny_llama(models / "tiny-llama")
    with running_server("--models-dir", str(models), "--model-name", GEMMA_FILE, log_dir=tmp_path) as server:
        get = lambda path, **params: httpx.get(f"{server.base_url}{path}", params=params, timeout=10)  # noqa: E731
        assert get("/readyz").json() == {"status": "ok", "model": GEMMA_FILE}
        before = get("/readyz", model="tiny-llama")
        assert before.status_code == 503 and before.json()["error"]["code"] == "model_not_loaded", before.text
        unknown = get("/readyz", model="no-such-model")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

        started = httpx.post(f"{server.base_url}/admin/models/load", json={"model": "tiny-llama", "wait": False},
                             timeout=10)
        assert started.status_code == 202, started.text
        loading = get("/readyz", model="tiny-llama")
        assert loading.status_code == 503 and loading.json()["error"]["code"] == "model_loading", loading.text
        assert int(loading.headers["retry-after"]) >= 1
        deadline = time.monotonic() + 120
        while (ready := get("/readyz", model="tiny-llama")).status_code != 200:
            assert ready.json()["error"]["code"] == "model_loading", ready.text
            assert get("/livez").json() == {"status": "alive"}  # alive all along
            assert get("/readyz").status_code == 200  # the default model serves meanwhile
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ready.json() == {"status": "ok", "model": "tiny-llama"}
