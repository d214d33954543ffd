"""CUDA-only checks of the transformers engine: bitsandbytes 4/8-bit loading, GPU memory freed on unload, fp16
speed. Skipped on machines without a GPU (CI here has none); run them where one is available."""

from __future__ import annotations

import importlib.util
import time

import httpx
import pytest
import yaml

from tests.server_process import running_server
from tests.tiny_hf_model import build_tiny_llama

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ASK = [{"role": "user", "content": "Tell me about owls."}]


@pytest.fixture(scope="module")
def cuda_server(tmp_path_factory):
    models = tmp_path_factory.mktemp("cuda-models")
    build_tiny_llama(models / "tiny-llama")
    folder = str(models / "tiny-llama")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "tiny-fp16", "path": folder, "engine": "transformers", "hf": {"device": "cuda", "dtype": "float16"}},
        {"id": "tiny-4bit", "path": folder, "engine": "transformers", "hf": {"device": "cuda", "quantization": "4bit"}},
        {"id": "tiny-8bit", "path": folder, "engine": "transformers", "hf": {"device": "cuda", "quantization": "8bit"}},
    ]}))
    flags = ("--models-dir", str(models), "--model-name", "tiny-fp16", "--no-install-embedded-models")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("cuda-server")) as server:
        yield server


def client_for(server):
    return server.openai_client()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("model", ["tiny-4bit", "tiny-8bit"])
def test_bitsandbytes_models_generate(cuda_server, model):
    response = client_for(cuda_server).chat.completions.create(model=model, messages=ASK, max_tokens=8)
    assert response.usage.completion_tokens == 8


def test_unload_frees_gpu_memory(cuda_server):
    client_for(cuda_server).chat.completions.create(model="tiny-fp16", messages=ASK, max_tokens=2)
    result = httpx.post(f"{cuda_server.base_url}/admin/models/unload", json={"model": "tiny-fp16"}, timeout=60).json()
    print(f"\n[cuda unload] {result['cuda_allocated_bytes_before']} -> {result['cuda_allocated_bytes_after']} bytes")
    assert result["cuda_allocated_bytes_after"] < result["cuda_allocated_bytes_before"]


def test_fp16_decode_speed(cuda_server):
    client = client_for(cuda_server)
    client.chat.completions.create(model="tiny-fp16", messages=ASK, max_tokens=4)
    started = time.perf_counter()
    response = client.chat.completions.create(model="tiny-fp16", messages=ASK, max_tokens=128, temperature=0,
                                              logit_bias={"4": -100})
    rate = response.usage.completion_tokens / (time.perf_counter() - started)
    print(f"\n[cuda fp16] {rate:.0f} tok/s (tiny model: per-step overhead dominates)")
    assert response.usage.completion_tokens == 128
