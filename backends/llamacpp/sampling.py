"""Per-sequence sampling with llama.cpp's own C sampler chain, and logprobs for the chosen tokens.

Sampling in C keeps per-token Python work constant instead of proportional to the 262k-token vocabulary.
The chain order follows llama.cpp's defaults: bias -> penalties -> top_k -> top_p -> min_p -> temp -> dist.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Callable

import llama_cpp
import numpy as np

from backends.answer_steering import Boost
from backends.base import GrammarSpec, SamplingParams, TokenLogprob, TopLogprob
from backends.llamacpp.model import LlamaModel
from backends.utf8_validity import Utf8Validity


def _logit_bias_sampler(n_vocab: int, logit_bias: dict[int, float]):
    entries = (llama_cpp.llama_logit_bias * len(logit_bias))()
    for entry, (token, bias) in zip(entries, logit_bias.items(), strict=True):
        entry.token = token
        entry.bias = bias
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(logit_bias), entries)


def _uses_penalties(params: SamplingParams) -> bool:
    return params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def grammar_sampler(model: LlamaModel, grammar: GrammarSpec):
    """A llama.cpp grammar sampler, or None if the GBNF does not parse."""
    text = grammar.gbnf.encode()
    if not grammar.lazy_triggers:
        sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, text, b"root")
    else:
        patterns = (ctypes.c_char_p * len(grammar.lazy_triggers))(*(p.encode() for p in grammar.lazy_triggers))
        sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            model.vocab, text, b"root", patterns, len(grammar.lazy_triggers), None, 0
        )
    return sampler or None


def grammar_parses(model: LlamaModel, grammar: GrammarSpec) -> bool:
    sampler = grammar_sampler(model, grammar)
    if sampler is None:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


class SamplerChain:
    """Owns one llama_sampler chain; `sample` picks the next token from a batch row and records it."""

    def __init__(
        self, model: LlamaModel, params: SamplingParams, prompt_tokens: list[int], grammar: GrammarSpec | None = None
    ) -> None:
        self.grammar = None
        if grammar is not None:
            # Kept out of the chain: checking 262k tokens against a grammar every step is slow, so the chain
            # picks first and the grammar only vets that pick (see `sample`), as llama.cpp's common sampler does.
            # Built first, so a grammar that does not parse leaves nothing allocated behind.
            self.grammar = grammar_sampler(model, grammar)
            if self.grammar is None:
                raise ValueError("grammar does not parse")
            self._candidates = _CandidateBuffer(model.n_vocab)
            self._utf8 = Utf8Validity()  # of the answer's bytes: a grammar allows surrogates (see utf8_validity.py)
        self.model = model
        # A plain greedy chain is an argmax over the logits row: numpy's (SIMD, first maximum on ties, as llama.cpp's
        # greedy sampler) reads 262k logits in ~40-80 us where llama_sampler_sample first copies them into a
        # candidate array (~0.5 ms on gemma-3). Such a chain keeps no state, so skipping it changes nothing. A
        # logit bias (clients ban tokens with it) is added in place for the argmax and taken off again after.
        self.argmax_only = grammar is None and not _uses_penalties(params) and params.temperature <= 0.0
        self._bias_tokens = np.fromiter(params.logit_bias.keys(), dtype=np.intp, count=len(params.logit_bias))
        self._bias = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.ptr = llama_cpp.llama_sampler_chain_init(chain_params)
        add = lambda sampler: llama_cpp.llama_sampler_chain_add(self.ptr, sampler)  # noqa: E731
        logit_bias = dict(params.logit_bias)
        if grammar is not None and grammar.end_bonus:  # only matters where the grammar allows the answer to end
            for token in model.end_tokens():
                logit_bias[token] = logit_bias.get(token, 0.0) + grammar.end_bonus
        if logit_bias:
            add(_logit_bias_sampler(model.n_vocab, logit_bias))
        if _uses_penalties(params):
            penalties = llama_cpp.llama_sampler_init_penalties(
                model.n_vocab,
                params.penalty_last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
            )
            # Penalties look back over recent tokens, prompt included (as llama-server does). Fed to this
            # sampler alone: the grammar must not see prompt tokens.
            for token in prompt_tokens[-params.penalty_last_n :]:
                llama_cpp.llama_sampler_accept(penalties, token)
            add(penalties)
        if params.temperature <= 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, context_ptr, batch_index: int, steer: Callable[[int], Boost | None] | None = None) -> tuple[int, bool]:
        """The next token, and whether steering changed it. `steer` (grammar-constrained only) sees the model's own
        pick and may return extra logits for some tokens (backends/answer_steering.py); the pick is then made
        again."""
        if self.argmax_only:
            return self._argmax(logits_view(llama_cpp.llama_get_logits_ith(context_ptr, batch_index),
                                            self.model.n_vocab)), False
        if self.grammar is None:
            return llama_cpp.llama_sampler_sample(self.ptr, context_ptr, batch_index), False
        logits = llama_cpp.llama_get_logits_ith(context_ptr, batch_index)
        natural = self._constrained_pick(logits, None)
        boost = steer(natural) if steer is not None else None
        token = natural if boost is None else self._constrained_pick(logits, boost)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.ptr, token)
        self._utf8.feed(self.model.piece(token))
        return token, token != natural

    def _argmax(self, logits: np.ndarray) -> int:
        """The greedy pick with the logit bias added as llama.cpp's bias sampler adds it (float32); the logits row
        is left as it was (logprobs read it after)."""
        if not len(self._bias_tokens):
            return int(logits.argmax())
        unbiased = logits[self._bias_tokens]
        logits[self._bias_tokens] = unbiased + self._bias
        try:
            return int(logits.argmax())
        finally:
            logits[self._bias_tokens] = unbiased

    def accept(self, token: int) -> None:
        """Record a token the engine wrote without sampling it. llama.cpp aborts the process on a token its grammar
        rejects, so that is checked first."""
        if self.grammar is not None:
            if not self._grammar_allows(token):
                raise ValueError(f"the grammar does not allow the written token {token}")
            llama_cpp.llama_sampler_accept(self.grammar, token)
            if not self._utf8.feed(self.model.piece(token)):
                self._utf8.reset()
        if not self.argmax_only:
            llama_cpp.llama_sampler_accept(self.ptr, token)

    def _constrained_pick(self, logits, boost: Boost | None) -> int:
        token = self._candidates.select(logits, self.ptr, boost=boost)
        if not self._grammar_allows(token) or not self._keeps_utf8(token):
            token = self._candidates.select(logits, self.ptr, constraint=self.grammar, boost=boost)
            if not self._keeps_utf8(token):  # forbid every token that would break it, then pick again
                token = self._candidates.select(logits, self.ptr, constraint=self.grammar, boost=boost,
                                                forbidden=self.model.utf8_table.ill_formed_after(self._utf8))
        return token

    def _keeps_utf8(self, token: int) -> bool:
        return self._utf8.accepts(self.model.piece(token))

    def _grammar_allows(self, token: int) -> bool:
        single = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 1.0, 0.0))
        array = llama_cpp.llama_token_data_array(single, 1, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return single[0].logit != float("-inf")

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class _CandidateBuffer:
    """A reusable llama_token_data_array over the whole vocabulary, filled from logits with numpy."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.ids = np.arange(n_vocab, dtype=np.int32)

    def select(self, logits_ptr, chain, constraint=None, boost: Boost | None = None,
               forbidden: np.ndarray | None = None) -> int:
        """Run `constraint` (if any) then `chain` over all tokens, without recording the pick anywhere
        (`forbidden`: a mask of tokens never to pick)."""
        self.data["id"] = self.ids
        self.data["logit"] = logits_view(logits_ptr, self.n_vocab)
        if boost is not None:
            tokens, amount = boost
            self.data["logit"][tokens] += amount
        if forbidden is not None:
            self.data["logit"][forbidden] = -np.inf
        self.data["p"] = 0.0
        pointer = self.data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(pointer, self.n_vocab, -1, False)
        if constraint is not None:
            llama_cpp.llama_sampler_apply(constraint, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        if array.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        return int(array.data[array.selected].id)


def logits_view(logits_ptr, n_vocab: int) -> np.ndarray:
    """A numpy view (no copy) of one logits row returned by llama_get_logits_ith."""
    return np.ctypeslib.as_array(ctypes.cast(logits_ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))


def token_logprobs(model: LlamaModel, logits_ptr, token: int, top_n: int) -> TokenLogprob:
    """Log-probability of `token` under the model's raw distribution, plus the `top_n` most likely tokens."""
    logits = logits_view(logits_ptr, model.n_vocab)
    peak = float(logits.max())
    log_normalizer = peak + float(np.log(np.exp(logits - peak).sum()))
    top: tuple[TopLogprob, ...] = ()
    if top_n > 0:
        candidates = np.argpartition(logits, -top_n)[-top_n:]
        candidates = candidates[np.argsort(-logits[candidates])]
        top = tuple(_top_entry(model, int(t), float(logits[t]) - log_normalizer) for t in candidates)
    text = model.token_text(token)
    return TokenLogprob(
        token=text.decode("utf-8", errors="replace"),
        token_bytes=text,
        logprob=float(logits[token]) - log_normalizer,
        top=top,
    )


def _top_entry(model: LlamaModel, token: int, logprob: float) -> TopLogprob:
    text = model.token_text(token)
    return TopLogprob(token=text.decode("utf-8", errors="replace"), token_bytes=text, logprob=logprob)
