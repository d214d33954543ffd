"""Speculation policies compared on the same answer: ours against llama.cpp's `ngram-simple` and `ngram-mod`, replayed.

Two servers' greedy answers to the same prompt differ (templates, BOS, rounding), and a copyable answer speeds up any
drafter, so timing llama-server against us also compares answers. Here each workload's greedy answer is generated
once (llama.cpp, no speculation) and then replayed token by token through each drafting policy: at every step the
policy drafts from what it has seen, the draft's accepted part is the prefix that equals the answer, and the step
yields that plus one token. A step with L drafted rows costs what `llama_decode` of one sequence's 1 + L rows takes
here, measured for every L up to 64 under the server's context configuration, as a share of a one-token step (the
cost is not linear in L on every CPU: on an AVX-512 AMD EPYC, 4 rows took 3x one row, 16 rows 5x). Predicted
speed-up = answer tokens / summed step cost.

  ours          the server's own speculative steps (speculative_steps.py: lengths, cooldowns, the pool, rows
                rounded to whole tiles by these measured step costs)
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
from types import SimpleNamespace

import llama_cpp
import numpy as np

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE, ensure_embedded_model
from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel, add_to_batch, flash_attention
from backends.llamacpp.sequences import Slot
from backends.llamacpp.speculation import SequenceDrafter, SpeculationOptions
from backends.llamacpp.speculative_steps import SpeculativeSteps
from bench.bench_servers import messages_for
from bench.bench_speculative import MAX_TOKENS, WORKLOADS
from settings import PROJECT_ROOT, Settings

MODELS = {"gemma": GEMMA_FILE, "smollm2": SMOLLM2_FILE}
TURNS = {"gemma": "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
         "smollm2": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"}


class Ours:
    """The server's own speculative steps (speculative_steps.py: draft lengths, cooldowns, the pool, rounding to
    whole tiles by the measured step times) on one slot, verified against the answer through its `verify`."""

    def __init__(self, step_cost: list[float]) -> None:
        self.step_cost = step_cost

    def start(self, tokens: list[int], earlier: list[int] | None) -> Slot:
        options = SpeculationOptions(pool_tokens=len(earlier) if earlier else 0)
        context = SimpleNamespace(kv_unified=True, n_batch=len(self.step_cost) + 1, remove_tokens=lambda *_: True)
        self.batch = llama_cpp.llama_batch_init(len(self.step_cost) + 1, 0, 1)
        self.steps = SpeculativeSteps(context, self.batch, options, 1 << 20, None, sample=self._sample)
        for drafted, cost in enumerate(self.step_cost):  # as if each row count had been timed already
            self.steps.observe_step(drafted + 1, cost / 100)
        if earlier:
            self.steps.pool.keep(SequenceDrafter(earlier, options))
        slot = Slot(0, cached_tokens=tokens[:-1])  # (the last one joins the first step)
        slot.job = SimpleNamespace(max_tokens=1 << 20, prompt_tokens=tokens, emit=lambda delta: None)
        slot.prompt_cursor = len(tokens)
        slot.drafter = SequenceDrafter(tokens, options)
        return slot

    def draft(self, slot: Slot, room: int) -> list[int]:
        self.batch.n_tokens = 0
        slot.completion_tokens = slot.job.max_tokens - room - 1  # (what the steps may draft: room tokens)
        slot.batch_index = slot.add_to_batch(self.batch, slot.drafter.tokens[-1], want_logits=True)
        self.steps.add_drafts([slot])
        return list(slot.draft)

    def advance(self, slot: Slot, tokens: list[int], drafted: int, accepted: int) -> None:
        self._produced = iter(tokens)  # the sampled token, then one for each accepted guess
        self._sample(slot)
        if slot.draft:
            self.steps.verify(slot)

    def _sample(self, slot: Slot) -> None:
        """The scheduler's sampling, as far as speculation sees it: the answer's next token, pushed to the drafter."""
        slot.next_token = next(self._produced)
        slot.drafter.push(slot.next_token)


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


def replay(policy, prompt: list[int], answer: list[int], step_cost: list[float], again: bool) -> float:
    """Predicted speed-up over decoding without speculation for `answer` after `prompt`."""
    state = policy.start(prompt + answer[:1], prompt + answer if again else None)
    try:
        return _replayed(policy, state, answer, step_cost)
    finally:
        if isinstance(policy, Ours):
            llama_cpp.llama_batch_free(policy.batch)


def _replayed(policy, state, answer: list[int], step_cost: list[float]) -> float:
    position, cost = 1, 0.0  # (the first token comes from the prompt's evaluation)
    while position < len(answer):
        draft = policy.draft(state, len(answer) - position - 1)  # (the step's own token, then the draft)
        accepted = 0
        while accepted < len(draft) and draft[accepted] == answer[position + accepted]:
            accepted += 1
        produced = answer[position:position + accepted + 1]
        policy.advance(state, produced, len(draft), accepted)
        cost += step_cost[len(draft)]
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


def step_costs(context: LlamaContext, longest: int = 64, position: int = 320, repeats: int = 5) -> list[float]:
    """What `llama_decode` of one sequence's 1 + L rows (logits for each, a verification's shape) costs at
    `position`, for L = 0..longest, as a share of the one-row step (medians over `repeats`, sizes in turns)."""
    batch = llama_cpp.llama_batch_init(max(context.n_batch, longest + 1), 0, 1)
    seconds: list[list[float]] = [[] for _ in range(longest + 1)]
    try:
        batch.n_tokens = 0
        for index in range(position):  # a context to attend over, as an answer's steps have
            add_to_batch(batch, 100 + index % 1000, index, 1, logits=False)
        assert context.decode(batch) == 0
        for _ in range(repeats):
            for drafted in range(longest + 1):
                context.remove_tokens(1, position)
                batch.n_tokens = 0
                for index in range(drafted + 1):
                    add_to_batch(batch, 200 + index, position + index, 1, logits=True)
                start = time.perf_counter()
                assert context.decode(batch) == 0
                llama_cpp.llama_synchronize(context.ptr)
                seconds[drafted].append(time.perf_counter() - start)
    finally:
        llama_cpp.llama_batch_free(batch)
        context.clear_sequence(1)
    one = statistics.median(seconds[0])
    return [statistics.median(times) / one for times in seconds]


def bench_model(key: str, args) -> None:
    models_dir = PROJECT_ROOT / "models"
    ensure_embedded_model(models_dir, MODELS[key])
    model = LlamaModel(models_dir / MODELS[key])
    defaults = Settings()  # the server's context configuration: its flash attention and batch sizes
    context = LlamaContext(model, ContextConfig(
        n_ctx=4096, n_seq_max=2, n_batch=defaults.n_batch, n_ubatch=defaults.n_ubatch, n_threads=args.threads,
        n_threads_batch=args.threads, flash_attn=flash_attention(defaults.flash_attn, model), kv_unified=True))
    try:
        cost = step_costs(context)
        answers = greedy_answers(model, context, TURNS[key], args)
    finally:
        context.free()
        model.free()
    shown = (1, 2, 3, 4, 8, 16, 32, 48, 64)
    print(f"\n{key}: a step with L drafted rows costs (one-token steps): "
          + "  ".join(f"L={drafted} {cost[drafted]:.2f}" for drafted in shown))
    print("predicted speed-up over no speculation (first run / the same request again)")
    print(f"{'':14}" + "".join(f"{name:>16}" for name in answers))
    for label, policy in (("ours", lambda: Ours(cost)), ("ngram-simple", NgramSimple), ("ngram-mod", NgramMod)):
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
