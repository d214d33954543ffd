"""The decode limit from Python, under our engine's context configuration and under llama-batched-bench's.

bench_servers reports each server's share of llama-batched-bench's decode-only speed. When ours falls short, the
gap is either the *configuration* (context size, KV layout, flash attention, weight placement: llama.cpp does
different work per step) or *contention* (our Python threads take CPU from ggml's while it decodes). This bench
runs the bare loop batched-bench runs (B sequences, one token each per llama_decode, logits for every row, nothing
else) in one Python thread with no server around it, once per configuration, so each configuration's step time is
the floor for a server using it; a server's step time above that floor is contention or its own work.

Configurations (all on our LlamaModel / LlamaContext wrappers, the server's code path for loading):
  server          what `python server.py --parallel P --n-ctx P*2304` creates with its defaults (flash attention
                  by head size and slots, one KV cache for all slots, batch sizes, weights placed by --repack auto)
  server+fa       the same with flash attention on
  server-streams  the same with one KV stream per slot (--no-kv-unified)
  batched-bench   llama-batched-bench's as bench_servers runs it: n_ctx P*(64+T)+256, batch 2048, flash attention on
                  (its `auto` on a CPU), one KV stream per sequence; weights placed like the server's
  ...-plain       weights in plain memory (--repack off: llama-server's --no-repack, which AMX Xeons need for
                  llama.cpp's own binaries); batched-bench-nofa: flash attention off

--rows R gives each sequence R tokens a step (a verification's shape), --spacing S puts the sequences on slots 0, S,
2S... (with one KV stream per slot llama.cpp decodes only runs of consecutive ids together), --idle-cells N keeps N
cells of one more sequence in the cache, below the others' (what a server's idle slots keep for their next turn).

Usage: python -m bench.bench_decode_config [--sequences 1 8 16] [--tokens 64] [--prompt 64] [--rows 1] [--spacing 1]
       [--threads 2] [--idle-cells 0] [--configs server server-streams batched-bench ...] [--model gemma|smollm2]
       [--rounds 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import llama_cpp

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel, add_to_batch, flash_attention
from settings import PROJECT_ROOT, Settings

MODELS = {"gemma": GEMMA_FILE, "smollm2": SMOLLM2_FILE}
CONFIGS = ("server", "server+fa", "server-streams", "server-plain", "batched-bench", "batched-bench-plain",
           "batched-bench-nofa")
SLOT_CONTEXT = 2304  # bench_servers' --n-ctx per slot


def context_config(name: str, model: LlamaModel, args) -> ContextConfig:
    slots = max(args.sequences) * args.spacing + (1 if args.idle_cells else 0)  # (+ the idle sequence's)
    needed = slots * (args.prompt + args.tokens * args.rows)
    if name.startswith("server"):
        defaults = Settings()
        flash = "+fa" in name or flash_attention(defaults.flash_attn, model, sequences=slots)
        return ContextConfig(n_ctx=max(slots * SLOT_CONTEXT, needed), n_seq_max=slots, n_batch=defaults.n_batch,
                             n_ubatch=defaults.n_ubatch, n_threads=args.threads, n_threads_batch=args.threads,
                             flash_attn=flash, kv_unified=defaults.kv_unified and "-streams" not in name)
    # batched-bench: -c P*(pp+tg)+256 -b 2048 -ub 512 in bench_servers, flash attention auto = on for a CPU context
    return ContextConfig(n_ctx=needed + 256, n_seq_max=slots, n_batch=2048, n_ubatch=512, n_threads=args.threads,
                         n_threads_batch=args.threads, flash_attn="nofa" not in name, kv_unified=False)


def decode_steps(context: LlamaContext, batch, sequences: int, args, rng: random.Random, n_vocab: int) -> list[float]:
    """Prompts for `sequences` sequences, then args.tokens steps of one token each; the steps' seconds."""
    context.clear_memory()
    seq_ids = [i * args.spacing for i in range(sequences)]
    if args.idle_cells:  # first, so its cells sit below the others' (an idle slot's kept turn, in a server)
        decode_prompt(context, batch, max(args.sequences) * args.spacing, args.idle_cells, rng, n_vocab)
    for seq in seq_ids:
        decode_prompt(context, batch, seq, args.prompt, rng, n_vocab)
    steps = []
    for step in range(args.tokens):
        batch.n_tokens = 0
        for seq in seq_ids:
            for row in range(args.rows):  # rows > 1: a verification step's shape (the token and a draft)
                add_to_batch(batch, rng.randrange(n_vocab), args.prompt + step * args.rows + row, seq, logits=True)
        started = time.perf_counter()
        if context.decode(batch) != 0:
            raise RuntimeError("decode failed")
        llama_cpp.llama_synchronize(context.ptr)
        steps.append(time.perf_counter() - started)
    return steps


def decode_prompt(context: LlamaContext, batch, seq: int, length: int, rng: random.Random, n_vocab: int) -> None:
    """`length` random tokens into sequence `seq`, in n_batch chunks."""
    for start in range(0, length, context.n_batch):
        batch.n_tokens = 0
        for position in range(start, min(length, start + context.n_batch)):
            add_to_batch(batch, rng.randrange(n_vocab), position, seq, logits=position == length - 1)
        if context.decode(batch) != 0:
            raise RuntimeError("prompt decode failed")


def run_config(name: str, args) -> dict[int, tuple[float, float]]:
    """{B: (median ms per step, tok/s)} for one configuration."""
    repack = "off" if name.endswith("-plain") else "auto"
    model = LlamaModel(PROJECT_ROOT / "models" / MODELS[args.model], repack=repack)
    config = context_config(name, model, args)
    context = LlamaContext(model, config)
    batch = llama_cpp.llama_batch_init(max(max(args.sequences) * args.rows, config.n_batch), 0, 1)
    rng = random.Random(0)
    results = {}
    try:
        decode_steps(context, batch, 1, args, rng, model.n_vocab)  # warm-up: first decodes allocate
        for sequences in args.sequences:
            steps = decode_steps(context, batch, sequences, args, rng, model.n_vocab)
            median = statistics.median(steps)
            results[sequences] = (median * 1000, sequences * args.rows * len(steps) / sum(steps))
    finally:
        llama_cpp.llama_batch_free(batch)
        context.free()
        model.free()
    print(f"{name:<20} n_ctx {config.n_ctx:>6}  flash attention {'on ' if config.flash_attn else 'off'}  "
          + "  ".join(f"B={b}: {ms:6.1f} ms/step {tps:6.1f} tok/s" for b, (ms, tps) in results.items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--tokens", type=int, default=64, help="decode steps per batch size")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
    parser.add_argument("--rows", type=int, default=1, help="tokens per sequence per step (1 + a draft's length)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle-cells", type=int, default=0,
                        help="cells of one more sequence that only sits in the cache (a server's idle slots' turns)")
    parser.add_argument("--spacing", type=int, default=1, help="sequence ids 0, s, 2s... (scattered slots)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--model", choices=sorted(MODELS), default="gemma")
    parser.add_argument("--rounds", type=int, default=1, help="run the configurations in turn this many times")
    args = parser.parse_args()
    table: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name in args.configs:
            table.setdefault(name, []).append(run_config(name, args))
    print("\nmedian over rounds, tok/s (decode only; B sequences one token each per step)")
    print(f"{'config':<20}" + "".join(f"{'B=' + str(b):>10}" for b in args.sequences))
    for name, rounds in table.items():
        print(f"{name:<20}" + "".join(f"{statistics.median(r[b][1] for r in rounds):>10.1f}" for b in args.sequences))


if __name__ == "__main__":
    main()
