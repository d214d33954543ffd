"""Speculation policies compared on the same answer: ours against llama.cpp's `ngram-simple` and `ngram-mod`, replayed.

Two servers' greedy answers to the same prompt differ (templates, BOS, rounding), and a copyable answer speeds up any
drafter, so timing llama-server against us also compares answers. Here each workload's greedy answer is generated
once (llama.cpp, no speculation) and then replayed token by token through each drafting policy: at every step the
policy drafts from what it has seen, the draft's accepted part is the prefix that equals the answer, and the step
yields that plus one token. A step costs 1 + c x (drafted rows), with c, the cost of one extra row as a share of a
one-token step, measured here with llama_decode. Predicted speed-up = answer tokens / summed step cost.

  ours          backends/llamacpp/speculation.py as the server runs it (lengths, cooldowns, the pool)
  ngram-simple  the latest earlier occurrence of the last 12 tokens; draft the 48 that followed (at least 12)
  ngram-mod     one table of 24-token contexts -> next token, chained up to 64 drafts, none under 48
(the two llama.cpp policies re-implemented from their description, docs/research/ngram-mod.md; no code copied).
"First" runs start from the prompt alone; "again" has the same request's earlier answer in our pool / their table.

Usage: python -m bench.bench_speculation_replay [--models gemma smollm2] [--max-tokens 320]
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp
import numpy as np

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE, ensure_embedded_model
from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel, add_to_batch
from backends.llamacpp.speculation import SequenceDrafter, SpeculationOptions
from bench.bench_servers import messages_for
from bench.bench_speculative import MAX_TOKENS, WORKLOADS
from settings import PROJECT_ROOT

MODELS = {"gemma": GEMMA_FILE, "smollm2": SMOLLM2_FILE}
TURNS = {"gemma": "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
         "smollm2": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"}


class Ours:
    def __init__(self) -> None:
        self.options = SpeculationOptions()

    def start(self, tokens: list[int], earlier: list[int] | None):
        self.others = (SequenceDrafter(earlier, self.options),) if earlier else ()
        return SequenceDrafter(tokens, self.options)

    def draft(self, drafter: SequenceDrafter, room: int) -> list[int]:
        count = drafter.budget(room)
        return drafter.lookup(count, self.others) if count else []

    def advance(self, drafter: SequenceDrafter, tokens: list[int], drafted: int, accepted: int) -> None:
        for token in tokens:
            drafter.push(token)
        if drafted:
            drafter.verified(drafted, accepted)


class NgramSimple:
    def __init__(self, n: int = 12, m: int = 48) -> None:
        self.n, self.m = n, m

    def start(self, tokens: list[int], earlier: list[int] | None) -> list[int]:
        return list(tokens)  # (no state across requests)

    def draft(self, context: list[int], room: int) -> list[int]:
        n, m = self.n, self.m
        if len(context) <= n + m + 1:
            return []
        key = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start:start + n] == key:
                draft = context[start + n:start + n + m]
                return draft[:room] if len(draft) >= n else []
        return []

    def advance(self, context: list[int], tokens: list[int], drafted: int, accepted: int) -> None:
        context.extend(tokens)


class NgramMod:
    def __init__(self, n: int = 24, shortest: int = 48, longest: int = 64) -> None:
        self.n, self.shortest, self.longest = n, shortest, longest

    def start(self, tokens: list[int], earlier: list[int] | None) -> list[int]:
        self.table: dict[tuple[int, ...], int] = {}
        if earlier:
            self._add(earlier, 0)
        self._add(tokens, 0)
        return list(tokens)

    def _add(self, tokens: list[int], start: int) -> None:
        for end in range(max(start, self.n), len(tokens)):
            self.table[tuple(tokens[end - self.n:end])] = tokens[end]

    def draft(self, context: list[int], room: int) -> list[int]:
        window, draft = context[-self.n:], []
        while len(draft) < self.longest:
            follower = self.table.get(tuple((window + draft)[-self.n:]))
            if follower is None:
                break
            draft.append(follower)
        return draft[:room] if len(draft) >= self.shortest else []

    def advance(self, context: list[int], tokens: list[int], drafted: int, accepted: int) -> None:
        before = len(context)
        context.extend(tokens)
        self._add(context, before)


def replay(policy, prompt: list[int], answer: list[int], row_cost: float, again: bool) -> float:
    """Predicted speed-up over decoding without speculation for `answer` after `prompt`."""
    state = policy.start(prompt + answer[:1], prompt + answer if again else None)
    position, cost = 1, 0.0  # (the first token comes from the prompt's evaluation)
    while position < len(answer):
        draft = policy.draft(state, len(answer) - position)
        accepted = 0
        while accepted < len(draft) and draft[accepted] == answer[position + accepted]:
            accepted += 1
        produced = answer[position:position + accepted + 1]
        policy.advance(state, produced, len(draft), accepted)
        cost += 1 + row_cost * len(draft)
        position += len(produced)
    return (len(answer) - 1) / cost


def greedy_answers(model: LlamaModel, context: LlamaContext, turn: str, args) -> dict[str, tuple[list, list]]:
    batch = llama_cpp.llama_batch_init(context.n_batch, 0, 1)
    answers = {}
    try:
        for name in [*WORKLOADS, "free"]:
            content = messages_for(3)[0]["content"] if name == "free" else WORKLOADS[name]
            prompt = model.tokenize(turn.format(content))
            context.clear_sequence(0)
            batch.n_tokens = 0
            for position, token in enumerate(prompt):
                add_to_batch(batch, token, position, 0, logits=position == len(prompt) - 1)
            assert context.decode(batch) == 0
            answer: list[int] = []
            for _ in range(MAX_TOKENS.get(name, args.max_tokens)):
                logits = np.ctypeslib.as_array(context.logits(batch.n_tokens - 1), shape=(model.n_vocab,))
                token = int(logits.argmax())
                if model.is_end_of_generation(token):
                    break
                answer.append(token)
                batch.n_tokens = 0
                add_to_batch(batch, token, len(prompt) + len(answer) - 1, 0, logits=True)
                assert context.decode(batch) == 0
            answers[name] = (prompt, answer)
    finally:
        llama_cpp.llama_batch_free(batch)
    return answers


def row_cost(context: LlamaContext, rows: int = 16, repeats: int = 7) -> float:
    """The cost of one extra row of a sequence as a share of a one-token step (llama_decode alone)."""
    batch = llama_cpp.llama_batch_init(rows + 1, 0, 1)

    def timed(count: int) -> float:
        seconds = []
        for _ in range(repeats):
            context.clear_sequence(1)
            batch.n_tokens = 0
            for index in range(count):
                add_to_batch(batch, 100 + index, index, 1, logits=True)
            start = time.perf_counter()
            assert context.decode(batch) == 0
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)
    try:
        one, many = timed(1), timed(rows + 1)
    finally:
        llama_cpp.llama_batch_free(batch)
        context.clear_sequence(1)
    return (many - one) / one / rows


def bench_model(key: str, args) -> None:
    models_dir = PROJECT_ROOT / "models"
    ensure_embedded_model(models_dir, MODELS[key])
    model = LlamaModel(models_dir / MODELS[key])
    context = LlamaContext(model, ContextConfig(n_ctx=4096, n_seq_max=2, n_batch=1024, n_ubatch=512,
                                                n_threads=args.threads, n_threads_batch=args.threads,
                                                flash_attn=False))
    try:
        cost = row_cost(context)
        answers = greedy_answers(model, context, TURNS[key], args)
    finally:
        context.free()
        model.free()
    print(f"\n{key}: one extra row costs {cost:.2f} of a one-token step; predicted speed-up over no speculation "
          "(first run / the same request again)")
    print(f"{'':14}" + "".join(f"{name:>16}" for name in answers))
    for label, policy in (("ours", Ours), ("ngram-simple", NgramSimple), ("ngram-mod", NgramMod)):
        cells = [f"{replay(policy(), p, a, cost, False):.2f} / {replay(policy(), p, a, cost, True):.2f}"
                 for p, a in answers.values()]
        print(f"{label:14}" + "".join(f"{cell:>16}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for key in args.models:
        bench_model(key, args)


if __name__ == "__main__":
    main()
