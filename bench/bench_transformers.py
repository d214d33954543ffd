"""Transformers engine throughput: our server vs bare `model.generate` in-process, same model and prompt.

Model: the embedded gemma-3-270m GGUF loaded through transformers (`gguf_file=`, dequantised to fp32 on CPU),
or `--model-dir DIR` for any Hugging Face folder. Greedy, end-of-turn banned so every run makes
`--max-tokens` tokens. Reports single-stream tok/s (ours over HTTP, streamed, vs in-process generate) and the
aggregate tok/s of 1 and 4 concurrent streams through the server.

Targets (issue 7): single stream >= 0.9x in-process; aggregate rising with concurrency.

Usage: python -m bench.bench_transformers [--max-tokens 64] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from backends.embedded_model import GEMMA_FILE
from settings import PROJECT_ROOT
from tests.server_process import running_server

GEMMA = PROJECT_ROOT / "models" / GEMMA_FILE
PROMPT = "Write a long story about a lighthouse keeper."


def stream_tokens(client: httpx.Client, max_tokens: int, ban: dict) -> tuple[int, float]:
    body = {"model": "bench-hf", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "logit_bias": ban, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    return tokens, time.perf_counter() - start


def server_rates(entry: dict, max_tokens: int, ban: dict, log_dir: Path) -> dict[str, float]:
    models = log_dir / "models"
    models.mkdir(exist_ok=True)
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    flags = ("--models-dir", str(models), "--model-name", "bench-hf", "--no-install-embedded-models", "--parallel", "4",
             "--n-ctx", "1024", "--no-scan-hf-cache")
    rates = {}
    with running_server(*flags, log_dir=log_dir) as server, httpx.Client(base_url=server.base_url, timeout=900) as client:
        stream_tokens(client, 4, ban)  # warm-up
        tokens, seconds = stream_tokens(client, max_tokens, ban)
        rates["ours_single"] = tokens / seconds
        for concurrency in (1, 4):
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(lambda _: stream_tokens(client, max_tokens, ban), range(concurrency)))
            rates[f"ours_aggregate_{concurrency}"] = sum(t for t, _ in results) / (time.perf_counter() - start)
    return rates


def in_process_rate(folder: Path, gguf_file: str | None, max_tokens: int, ban_ids: list[int]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kwargs).eval()
    prompt = f"<start_of_turn>user\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n"
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=True)
    bad_words = [[token] for token in ban_ids]
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        output = model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                bad_words_ids=bad_words or None)
    return (output.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face folder instead of the gemma GGUF")
    args = parser.parse_args()
    if args.model_dir:
        entry = {"id": "bench-hf", "path": str(args.model_dir), "engine": "transformers"}
        folder, gguf_file, ban_ids = args.model_dir, None, []
    else:
        entry = {"id": "bench-hf", "path": str(GEMMA), "engine": "transformers", "chat_template": "gemma"}
        folder, gguf_file, ban_ids = GEMMA.parent, GEMMA.name, [1, 106]  # <eos>, <end_of_turn>
    ban = {str(token): -100 for token in ban_ids}
    with tempfile.TemporaryDirectory() as scratch:
        rates = server_rates(entry, args.max_tokens, ban, Path(scratch))
    rates["in_process_single"] = in_process_rate(folder, gguf_file, args.max_tokens, ban_ids)
    for name, value in rates.items():
        print(f"{name:<24}{value:>8.1f} tok/s")
    print(f"\nsingle stream ours / in-process generate: {rates['ours_single'] / rates['in_process_single']:.2f} "
          f"(target >= 0.9); aggregate 4 vs 1 stream: {rates['ours_aggregate_4'] / rates['ours_aggregate_1']:.2f}x")


if __name__ == "__main__":
    main()
