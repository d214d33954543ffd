"""Images in: how long an image's prefill takes through our server against llama.cpp's own `llama-mtmd-cli` on the
same files, and what a repeated image costs once its KV is cached.

Files: the embedded gemma-3-270m GGUF and a random Gemma 3 projector built like the tests' (tests/tiny_projectors.py)
but image-sized like the real one's output: 224x224 images, 14-pixel patches, 256 image tokens (the count
gemma-3 models feed the language model; random weights encode as fast as real ones of the same size).

  ours, image prefill    cold TTFT of [image + question] minus cold TTFT of [question] (same text; each run a new
                         random image and a new question, so nothing is cached), median of --runs
  mtmd-cli               llama-mtmd-cli's own log: "mtmd batch encoding done in X ms" (older builds: "image
                         slice encoded in X ms") + "image decoded in Y ms",
                         median of --runs (a new image each run; its model load is not counted)
  repeated image         TTFT of a new question about an image asked about before (its KV reused) / cold TTFT

Usage: python -m bench.bench_vision [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

from backends.embedded_model import GEMMA_FILE
from bench.bench_servers import Process, llama_server_binary
from settings import PROJECT_ROOT
from tests.server_process import free_port
from tests.tiny_projectors import build_gemma3_mmproj

GEMMA = PROJECT_ROOT / "models" / GEMMA_FILE
SIZE = 224


def noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def ttft(base_url: str, question: str, image: bytes | None) -> float:
    content: list[dict] = [{"type": "text", "text": question}]
    if image is not None:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    body = {"model": "gemma-vision", "messages": [{"role": "user", "content": content}], "max_tokens": 1,
            "temperature": 0, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"delta"' in line and json.loads(line[6:])["choices"]:
                return time.perf_counter() - start
    raise RuntimeError("no token came back")


def mtmd_cli_run(cli: Path, folder: Path, mmproj: Path, run: int, args) -> float | None:
    """llama-mtmd-cli's own image encode + decode time for one new image (its model load not counted)."""
    image = folder / f"noise-{run}.png"
    image.write_bytes(noise_png(run))
    result = subprocess.run([str(cli), "-m", str(GEMMA), "--mmproj", str(mmproj), "--image", str(image), "-p",
                             "What do you see in this picture?", "-n", "1", "-t", str(args.threads), "--temp", "0",
                             "--chat-template", "gemma", "-v"],  # the 270m base GGUF has none; -v: timings
                            capture_output=True, text=True, timeout=300, check=False)
    log = result.stdout + result.stderr
    encoded = re.search(r"(?:image slice encoded|mtmd batch encoding done) in (\d+) ms", log)
    decoded = re.findall(r"image decoded \(batch \d+/\d+\) in (\d+) ms", log)
    if encoded is None or not decoded:
        print(f"llama-mtmd-cli gave no timings (exit {result.returncode}):\n{log[-2000:]}")
        return None
    return float(int(encoded.group(1)) + sum(int(ms) for ms in decoded))


def run_bench(folder: Path, mmproj: Path, args) -> dict[str, float]:
    """Ours and llama-mtmd-cli run by run, interleaved: this machine's speed drifts by tens of percent over
    minutes, so measuring one after the other would compare two different machines."""
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "gemma-vision", "path": str(GEMMA), "mmproj": str(mmproj)}]}))
    server_binary = llama_server_binary()
    cli = Path(server_binary).with_name("llama-mtmd-cli") if server_binary else None
    port = free_port()
    command = [sys.executable, "server.py", "--port", str(port), "--models-dir", str(folder), "--model-name",
               "gemma-vision", "--no-install-embedded-models", "--parallel", "1", "--n-ctx", "4096", "--n-threads",
               str(args.threads), "--log-level", "warning", "--no-prompt-cache"]
    server = Process("ours-vision", command, "/health", port)
    try:
        assert server.wait_ready(), f"our server did not start (log: {server.log.name})"
        ttft(server.base_url, "Hello.", noise_png(999))  # warm-up (first image: thread pools, kernels)
        cold, text, repeated, theirs = [], [], [], []
        for run in range(args.runs):
            question = f"Run {run}: what do you see in this picture, and which colours stand out the most?"
            text.append(ttft(server.base_url, question, None))
            image = noise_png(run)
            cold.append(ttft(server.base_url, question, image))
            repeated.append(ttft(server.base_url, f"And in one word, run {run}: is it bright or dark?", image))
            if cli is not None and cli.exists() and (measured := mtmd_cli_run(cli, folder, mmproj, run, args)):
                theirs.append(measured)
        result = {"image prefill ms": 1000 * (statistics.median(cold) - statistics.median(text)),
                  "cold ttft ms": 1000 * statistics.median(cold), "text ttft ms": 1000 * statistics.median(text),
                  "repeated ttft ms": 1000 * statistics.median(repeated)}
        if theirs:
            result["llama-mtmd-cli ms"] = statistics.median(theirs)
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vision-") as tmp:
        folder = Path(tmp)
        mmproj = build_gemma3_mmproj(folder / "mmproj-bench.gguf", image_size=SIZE, patch=14, image_tokens=256)
        ours = run_bench(folder, mmproj, args)
    print(f"\ngemma-3-270m + a 256-token projector, {SIZE}x{SIZE} images, {args.threads} threads, median of {args.runs}")
    for name, value in ours.items():
        print(f"  {name:24} {value:8.1f}")
    if "llama-mtmd-cli ms" in ours:
        speed = ours["llama-mtmd-cli ms"] / ours["image prefill ms"]
        print(f"  speed, ours vs llama-mtmd-cli: {speed:.2f}x (>= 0.9x wanted)")
    print(f"  repeated image TTFT / cold: {ours['repeated ttft ms'] / ours['cold ttft ms']:.2f} (<= 0.2 wanted)")


if __name__ == "__main__":
    main()
