"""Decode speed by weight placement (`--repack auto|on|off`), and whether each placement survives on this CPU.

Each placement runs in a child process of its own, so one that crashes (llama.cpp's AMX kernels on Xeons with AMX)
is reported as such instead of ending the bench. Runs alternate between placements (auto, on, off, auto, on,
off...) so drift on a shared host hits them alike; medians are printed with ratios against `on` (llama.cpp's own
default placement, the baseline: on a machine without AMX, `auto` must not be slower) and against `off`.

A child loads the model through our loader (backends/llamacpp/model.py), reads a distinct prompt into each of S
sequences, then decodes greedily: one llama_decode per step for all S sequences, argmax over the logits in numpy.
Usage: python -m bench.bench_repack [--model PATH] [--modes auto,on,off] [--sequences 1,8] [--tokens 64]
       [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # run as a script too (`python bench/bench_repack.py`)
    sys.path.insert(0, str(PROJECT_ROOT))

from backends.embedded_model import GEMMA_FILE  # noqa: E402

PROMPT_TOKENS = 32


def decode_speed(model_path: Path, repack: str, sequences: list[int], tokens: int, threads: int) -> dict:
    """Tokens per second decoding `tokens` steps for each sequence count (in this process)."""
    import llama_cpp
    import numpy as np

    from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel, add_to_batch

    model = LlamaModel(model_path, repack=repack)
    most = max(sequences)
    config = ContextConfig(n_ctx=most * (PROMPT_TOKENS + tokens + 8), n_seq_max=most, n_batch=512, n_ubatch=512,
                           n_threads=threads, n_threads_batch=threads, flash_attn=True)
    batch = llama_cpp.llama_batch_init(max(512, most), 0, 1)
    speeds = {}
    for count in sequences:
        context = LlamaContext(model, config)
        last = []
        for seq in range(count):  # each sequence its own prompt: no shared prefix
            prompt = model.tokenize(f"Story {seq}: " + "the lighthouse keeper wrote " * 8)[:PROMPT_TOKENS]
            batch.n_tokens = 0
            for position, token in enumerate(prompt):
                add_to_batch(batch, token, position, seq, logits=position == len(prompt) - 1)
            assert context.decode(batch) == 0
            last.append((np.argmax(np.ctypeslib.as_array(context.logits(len(prompt) - 1), (model.n_vocab,))),
                         len(prompt)))
        start = time.perf_counter()
        for _ in range(tokens):
            batch.n_tokens = 0
            for seq, (token, position) in enumerate(last):
                add_to_batch(batch, int(token), position, seq, logits=True)
            assert context.decode(batch) == 0
            last = [(np.argmax(np.ctypeslib.as_array(context.logits(row), (model.n_vocab,))), position + 1)
                    for row, (_, position) in enumerate(last)]
        speeds[count] = count * tokens / (time.perf_counter() - start)
        context.free()
    llama_cpp.llama_batch_free(batch)
    placement = model.placement.describe()
    model.free()
    return {"placement": placement, "tok_s": speeds}


def run_child(args: argparse.Namespace, repack: str) -> dict:
    """One placement in a child process: its speeds, or how it died."""
    command = [sys.executable, __file__, "--child", repack, "--model", str(args.model), "--tokens", str(args.tokens),
               "--threads", str(args.threads), "--sequences", ",".join(map(str, args.sequences))]
    child = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    if child.returncode != 0:
        reason = (f"killed by {signal.Signals(-child.returncode).name}" if child.returncode < 0
                  else f"exit {child.returncode}")
        return {"crashed": reason, "stderr": child.stderr.strip().splitlines()[-3:]}
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT_ROOT / "models" / GEMMA_FILE)
    parser.add_argument("--modes", default="auto,on,off")
    parser.add_argument("--sequences", default="1,8")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--child", choices=["auto", "on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sequences = [int(count) for count in args.sequences.split(",")]
    if args.child:
        print(json.dumps(decode_speed(args.model, args.child, args.sequences, args.tokens, args.threads)))
        return
    modes = args.modes.split(",")
    samples: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.runs):
        for mode in modes:
            samples[mode].append(run_child(args, mode))
    report(samples, args)


def report(samples: dict[str, list[dict]], args: argparse.Namespace) -> None:
    print(f"{args.model.name}, {args.threads} threads, {args.tokens} tokens per sequence, {args.runs} runs each")
    medians: dict[str, dict[int, float]] = {}
    for mode, runs in samples.items():
        crashed = [run for run in runs if "crashed" in run]
        if crashed:
            print(f"repack={mode:4s} CRASHED in {len(crashed)}/{len(runs)} runs: {crashed[0]['crashed']} "
                  f"{crashed[0]['stderr']}")
            continue
        medians[mode] = {count: statistics.median(run["tok_s"][str(count)] for run in runs)
                         for count in args.sequences}
        buffers = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in runs[0]["placement"]["buffers"].items())
        print(f"repack={mode:4s} weights in {buffers}")
    for count in args.sequences:
        line = [f"{count:3d} sequences:"]
        for mode, speeds in medians.items():
            ratios = [f"{speeds[count] / medians[base][count]:.2f}x {base}" for base in ("on", "off")
                      if base in medians and base != mode]
            line.append(f"{mode} {speeds[count]:7.1f} tok/s" + (f" ({', '.join(ratios)})" if ratios else ""))
        print("   ".join(line))


if __name__ == "__main__":
    main()
