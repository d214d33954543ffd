"""LoRA adapters: what decoding with adapters costs against decoding without, alone and mixed with base requests
on one loaded model, ours and llama-server's (which also runs one adapter configuration per batch), same run.

A random LoRA GGUF for the model (rank 8 on attn_q, attn_v, ffn_up of every layer: tests/lora_gguf.py; a real
adapter of that rank costs the same) is served as adapter entries `<model>+a` (and `+b`, another file) of the
same loaded base. Streams answer the load generator's free-form prompts, end tokens banned so every stream
writes --max-tokens tokens; figures are aggregate completion tok/s over all streams (wall time, first request
to last answer), median of --runs runs. Ours runs with `"speculative": false` (llama-server speculates only when
told), so both decode one token per sequence per step and the figures show what adapters cost.

  base xN        N streams without adapters
  lora xN        N streams of one adapter set
  mixed 2+2      2 base + 2 adapter streams (two sets take turns, step by step)
  mixed 2+1+1    2 base + 1 of each of two adapter sets (three sets)

llama-server: `--lora FILE --lora-init-without-apply`, adapter requests `"lora": [{"id": 0, "scale": 1}]`, base
requests scale 0 (its per-request adapters; mixed 2+1+1 is not measured there, it loads one file).

Usage: python -m bench.bench_lora [--model smollm2|gemma] [--runs 3] [--max-tokens 128] [--streams 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench.bench_servers import Process, llama_server_binary, messages_for
from bench.bench_speculative import MODELS, TEMPLATES
from settings import PROJECT_ROOT
from tests.lora_gguf import build_lora_gguf
from tests.server_process import free_port

END_TOKENS = {"smollm2": {"0": -100, "2": -100}, "gemma": {"1": -100, "106": -100}}


def ask(base_url: str, model: str, index: int, args, extra: dict) -> int:
    body = {"model": model, "messages": messages_for(index), "max_tokens": args.max_tokens, "temperature": 0,
            "logit_bias": END_TOKENS[args.model], **extra}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=900)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def aggregate_rate(base_url: str, requests: list[tuple[str, dict]], args) -> float:
    """Completion tok/s of the requests run together (median of --runs)."""
    rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            tokens = sum(pool.map(lambda item: ask(base_url, item[1][0], item[0], args, item[1][1]),
                                  enumerate(requests)))
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def workloads(base: tuple, lora_a: tuple, lora_b: tuple | None, streams: int) -> dict[str, list]:
    rows = {"base x1": [base], "lora x1": [lora_a], f"base x{streams}": [base] * streams,
            f"lora x{streams}": [lora_a] * streams, "mixed 2+2": [base, base, lora_a, lora_a]}
    if lora_b is not None:
        rows["mixed 2+1+1"] = [base, base, lora_a, lora_b]
    return rows


def bench_ours(folder: Path, args) -> dict[str, float]:
    model = MODELS[args.model]
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "base", "path": str(PROJECT_ROOT / "models" / model)},
        {"id": "base+a", "base": "base", "lora": ["a.gguf"]},
        {"id": "base+b", "base": "base", "lora": ["b.gguf"]},
    ]}))
    port = free_port()
    command = [sys.executable, "server.py", "--port", str(port), "--models-dir", str(folder), "--model-name", "base",
               "--no-install-embedded-models", "--parallel", str(args.streams), "--n-ctx", str(args.streams * 1024),
               "--n-threads", str(args.threads), "--log-level", "warning", "--cache-dir", str(folder / "cache")]
    server = Process("ours", command, "/health", port)
    try:
        assert server.wait_ready(), f"our server did not start (log: {server.log.name})"
        for name in ("base", "base+a", "base+b"):
            ask(server.base_url, name, 0, argparse.Namespace(**{**vars(args), "max_tokens": 4}), {})  # load, warm
        off = {"speculative": False}  # one token per step, as llama-server decodes: the adapters' cost alone
        rows = workloads(("base", off), ("base+a", off), ("base+b", off), args.streams)
        return {label: aggregate_rate(server.base_url, requests, args) for label, requests in rows.items()}
    finally:
        server.stop()


def bench_llama_server(folder: Path, args) -> dict[str, float] | None:
    binary = llama_server_binary()
    if binary is None:
        return None
    port = free_port()
    command = [binary, "-m", str(PROJECT_ROOT / "models" / MODELS[args.model]), "--port", str(port),
               "-np", str(args.streams), "-c", str(args.streams * 1024), "-t", str(args.threads), "-tb",
               str(args.threads), "--jinja", "--no-webui", "--lora", str(folder / "a.gguf"), "--lora-init-without-apply"]
    if args.model in TEMPLATES:
        command += ["--chat-template-file", str(TEMPLATES[args.model])]
    server = Process("llama-server", command, "/health", port)
    try:
        if not server.wait_ready():
            print(f"llama-server did not start (log: {server.log.name})")
            return None
        base = ("m", {"lora": [{"id": 0, "scale": 0.0}]})
        lora = ("m", {"lora": [{"id": 0, "scale": 1.0}]})
        ask(server.base_url, "m", 0, argparse.Namespace(**{**vars(args), "max_tokens": 4}), {})
        rows = workloads(base, lora, None, args.streams)
        return {label: aggregate_rate(server.base_url, requests, args) for label, requests in rows.items()}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="smollm2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        folder = Path(tmp)
        base_file = PROJECT_ROOT / "models" / MODELS[args.model]
        build_lora_gguf(base_file, folder / "a.gguf", seed=1)
        build_lora_gguf(base_file, folder / "b.gguf", seed=2)
        results = {"ours": bench_ours(folder, args)}
        other = bench_llama_server(folder, args)
        if other:
            results["llama-server"] = other
    columns = list(results["ours"])
    print(f"\n{args.model}: completion tok/s, aggregate over the streams ({args.max_tokens} tokens each)")
    print(f"{'':14}" + "".join(f"{c:>13}" for c in columns))
    for name, values in results.items():
        print(f"{name:14}" + "".join(f"{values.get(c, float('nan')):>13.1f}" for c in columns))
    ours = results["ours"]
    print(f"{'ours vs base':14}" + "".join(f"{ours[c] / ours[f'base x{args.streams}' if 'x1' not in c else 'base x1']:>12.2f}x"
                                           for c in columns))
    if "llama-server" in results:
        print(f"{'ours / l-s':14}" + "".join(f"{ours[c] / results['llama-server'][c]:>12.2f}x"
                                            if c in results["llama-server"] else f"{'':>13}" for c in columns))


if __name__ == "__main__":
    main()
