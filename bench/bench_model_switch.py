"""Model loading and switching: what a request pays when its model is not resident, and what unload frees.

One run, one machine, two catalog entries of the embedded gemma GGUF (models.yaml), our server:
  warm          TTFT of a request whose model is loaded (the baseline)
  load          TTFT of the first request for a model that is not loaded (load + prompt)
  switch x1     TTFT when alternating between the two models with --max-loaded-models 1 (unload + load each time)
  switch x2     the same alternation with --max-loaded-models 2 (both stay resident)
  RSS           process RSS before and after POST /admin/models/unload

Usage: python -m bench.bench_model_switch [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from backends.embedded_model import GEMMA_FILE
from settings import PROJECT_ROOT
from tests.server_process import running_server

GEMMA = str(PROJECT_ROOT / "models" / GEMMA_FILE)
ASK = [{"role": "user", "content": "Name a colour."}]


def ttft(client: httpx.Client, model: str) -> float:
    body = {"model": model, "messages": ASK, "max_tokens": 2, "stream": True, "temperature": 0}
    start = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                return time.perf_counter() - start
    raise RuntimeError("no token")


def run(models_dir: Path, max_loaded: int, rounds: int, log_dir: Path) -> dict[str, float]:
    flags = ("--models-dir", str(models_dir), "--model-name", "gemma-a", "--no-install-embedded-models",
             "--max-loaded-models", str(max_loaded), "--no-prompt-cache")
    results: dict[str, float] = {}
    with running_server(*flags, log_dir=log_dir) as server, httpx.Client(base_url=server.base_url, timeout=300) as client:
        ttft(client, "gemma-a")
        results["warm"] = statistics.median(ttft(client, "gemma-a") for _ in range(rounds))
        results["load"] = ttft(client, "gemma-b")
        switches = [ttft(client, "gemma-a" if i % 2 == 0 else "gemma-b") for i in range(rounds * 2)]
        results[f"switch x{max_loaded}"] = statistics.median(switches)
        unloaded = client.post("/admin/models/unload", json={"model": "gemma-b"}).json()  # the last one used
        results["rss_before_mib"] = unloaded["rss_bytes_before"] / 2**20
        results["rss_after_mib"] = unloaded["rss_bytes_after"] / 2**20
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models"
        models.mkdir()
        entries = [{"id": name, "path": GEMMA, "settings": {"n_ctx": 2048, "parallel": 2}} for name in ("gemma-a", "gemma-b")]
        (models / "models.yaml").write_text(yaml.safe_dump({"models": entries}))
        one = run(models, 1, args.rounds, Path(scratch))
        two = run(models, 2, args.rounds, Path(scratch))
    print(f"{'case':<34}{'value':>10}")
    print(f"{'TTFT warm (model resident) s':<34}{one['warm']:>10.3f}")
    print(f"{'TTFT first request, load s':<34}{one['load']:>10.3f}")
    print(f"{'TTFT alternating, max-loaded 1 s':<34}{one['switch x1']:>10.3f}")
    print(f"{'TTFT alternating, max-loaded 2 s':<34}{two['switch x2']:>10.3f}")
    print(f"{'RSS before unload MiB':<34}{one['rss_before_mib']:>10.0f}")
    print(f"{'RSS after unload MiB':<34}{one['rss_after_mib']:>10.0f}")
    print(f"\nswitch cost with one slot: {one['switch x1'] / one['warm']:.1f}x a warm request; "
          f"with both resident: {two['switch x2'] / two['warm']:.2f}x")


if __name__ == "__main__":
    main()
