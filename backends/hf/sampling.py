"""Per-sequence sampling for the transformers engine, on one row of logits at a time.

Same knobs and order as the llama.cpp chain: logit bias, repetition penalty over the last `penalty_last_n`
tokens, presence/frequency penalties over the completion, the grammar mask, then greedy at temperature 0 or
temperature, top-k, top-p, min-p and a seeded draw. Each sequence owns its torch.Generator, so a seed gives
the same output whatever else is in the batch.
"""

from __future__ import annotations

import random
from collections import Counter

import torch

from backends.base import SamplingParams, TokenLogprob, TopLogprob


class RowSampler:
    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int) -> None:
        self.params = params
        self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
        self.recent = list(prompt_ids[-params.penalty_last_n :]) if params.penalty_last_n > 0 else []
        self.completion_counts: Counter[int] = Counter()
        valid = {t: b for t, b in params.logit_bias.items() if 0 <= t < vocab_size}
        self.bias_ids = torch.tensor(list(valid), dtype=torch.long)
        self.bias_values = torch.tensor(list(valid.values()), dtype=torch.float32)

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """Bias and penalties, in place on a float32 CPU row."""
        params = self.params
        if len(self.bias_ids):
            logits.index_add_(0, self.bias_ids, self.bias_values)
        if params.repeat_penalty != 1.0 and self.recent:
            ids = torch.tensor(sorted(set(self.recent)), dtype=torch.long)
            values = logits[ids]
            logits[ids] = torch.where(values > 0, values / params.repeat_penalty, values * params.repeat_penalty)
        if (params.presence_penalty or params.frequency_penalty) and self.completion_counts:
            ids = torch.tensor(list(self.completion_counts), dtype=torch.long)
            counts = torch.tensor(list(self.completion_counts.values()), dtype=torch.float32)
            logits[ids] -= params.presence_penalty + params.frequency_penalty * counts
        return logits

    def pick(self, logits: torch.Tensor) -> int:
        """Choose the next token from an adjusted (and grammar-masked) row."""
        params = self.params
        if params.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / params.temperature
        if 0 < params.top_k < logits.numel():
            kth = torch.topk(logits, params.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            beyond = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p  # keep the one crossing top_p
            probs = probs.scatter(0, order[beyond], 0.0)
        if params.min_p > 0:
            probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))

    def accept(self, token: int) -> None:
        if self.params.penalty_last_n > 0:
            self.recent.append(token)
            del self.recent[: -self.params.penalty_last_n]
        self.completion_counts[token] += 1


def row_logprobs(raw_logits: torch.Tensor, token: int, top_n: int, token_text) -> TokenLogprob:
    """Log-probability of `token` under the model's raw distribution, plus the `top_n` most likely tokens."""
    logprobs = torch.log_softmax(raw_logits, dim=-1)
    top: tuple[TopLogprob, ...] = ()
    if top_n > 0:
        values, ids = torch.topk(logprobs, top_n)
        top = tuple(_entry(token_text(int(i)), float(v)) for v, i in zip(values, ids))
    text = token_text(token)
    return TokenLogprob(token=text.decode("utf-8", errors="replace"), token_bytes=text, logprob=float(logprobs[token]), top=top)


def _entry(text: bytes, logprob: float) -> TopLogprob:
    return TopLogprob(token=text.decode("utf-8", errors="replace"), token_bytes=text, logprob=logprob)
