"""What the scheduler works on: a job (one sequence to generate, handed over from the event loop) and a slot (a
sequence id of the shared context, the job using it and that job's per-sequence state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp

from backends.answer_steering import Steering
from backends.base import GrammarSpec, ReasoningControl, SamplingParams, TokenDelta, TokenLogprob
from backends.engine_support import AnswerFloor, Emit
from backends.llamacpp.lora import BASE, LlamaLoraSet, key_of
from backends.llamacpp.media import MediaSpan
from backends.llamacpp.model import add_to_batch
from backends.llamacpp.prompt_cache import CachedPrefix
from backends.llamacpp.sampling import SamplerChain
from backends.llamacpp.speculation import SequenceDrafter
from backends.text_output import IncrementalDetokenizer, StopStringFilter


@dataclass(eq=False)
class SequenceJob:
    """One sequence to generate, handed from the event loop to the scheduler thread."""

    prompt_tokens: list[int]
    sampling: SamplingParams
    max_tokens: int
    stop: tuple[str, ...]
    top_logprobs: int | None
    grammar: GrammarSpec | None
    emit: Emit  # thread-safe: delivers chunks (or an exception) to the waiting request
    shown_special_tokens: frozenset[int] = frozenset()  # control tokens rendered as their text
    cached_prefix: CachedPrefix | None = None  # a stored state of a prompt prefix, found on disk beforehand
    prefill_only: bool = False  # evaluate the prompt into the cache, generate nothing (/restore_cache)
    on_saved: Callable[[bool], None] | None = None  # prefill_only: told once the state reached the disk cache
    tenant: str = ""  # who asked: the queue takes turns between tenants
    reasoning: ReasoningControl | None = None  # a thinking model's block: counted, budgeted, closed
    speculative: bool = True  # may draft and verify several tokens per step (the server's mode permitting)
    adapters: LlamaLoraSet | None = None  # LoRA adapters its sequence decodes with (None: the base weights)
    affinity: str | None = None  # the conversation it continues, as its client named it (Scheduler._admit)
    media: list[MediaSpan] = field(default_factory=list)  # images / audio in the prompt (placeholder runs)
    answer_floor: AnswerFloor | None = None  # what its grammar-constrained answer takes at least
    cancelled: bool = False  # set by the request side when the client goes away
    submitted_at: float = field(default_factory=time.monotonic)  # (its time in the queue is reported in its usage)

    @property
    def adapter_key(self) -> str:
        return key_of(self.adapters)

    def position_of(self, index: int) -> int:
        """The sequence position of prompt token `index` (never inside a media span): its index, but for media
        before it that take fewer positions than tokens (M-RoPE)."""
        return index + sum(span.positions - span.length for span in self.media if span.end <= index)


@dataclass(eq=False)
class Slot:
    """A sequence id in the shared context, and the job using it (if any)."""

    seq_id: int
    cached_tokens: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds, in order
    position_shift: int = 0  # next position - len(cached_tokens): media that took fewer positions than tokens
    last_used: int = 0  # when a job last took this slot (the scheduler's count): the oldest is evicted first
    affinity: str | None = None  # the conversation key of the job that last took it
    queued_seconds: float = 0.0  # how long its job waited for it
    adapter_key: str = BASE  # the adapter set those tokens' KV was computed with
    job: SequenceJob | None = None
    prompt_cursor: int = 0  # next prompt token to feed
    media_due: MediaSpan | None = None  # media the prompt continues with, decoded after this step's batch
    snapshot_at: int | None = None  # prompt length whose state goes to the disk cache once evaluated
    checkpoint_stops: list[int] = field(default_factory=list)  # prompt lengths to keep recurrent state at
    next_token: int | None = None  # sampled token waiting to be decoded
    batch_index: int = -1  # row of this step's batch that holds our logits, -1 if none
    sampler: SamplerChain | None = None
    detokenizer: IncrementalDetokenizer | None = None
    stop_filter: StopStringFilter | None = None
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    pending_text: str = ""  # text not yet emitted (a draft's tokens go out together once verified)
    completion_tokens: int = 0
    reused_tokens: int = 0
    steering: Steering | None = None  # reasoning budget, budget closing and loop breaking
    forced: list[int] = field(default_factory=list)  # tokens to write next without sampling
    drafter: SequenceDrafter | None = None  # speculation: guesses the next tokens
    draft: list[int] = field(default_factory=list)  # tokens guessed this step, in the batch after next_token
    draft_rows: list[int] = field(default_factory=list)  # their batch rows
    padding: int = 0  # the draft's last tokens that only fill the step's rows to a whole tile (speculative_steps.py)
    unverified: int = 0  # tokens at the end of cached_tokens (and the KV) not yet confirmed by sampling

    @property
    def committed_length(self) -> int:
        """Tokens of the sequence that are real: cached_tokens without a draft still being verified."""
        return len(self.cached_tokens) - self.unverified

    @property
    def next_position(self) -> int:
        return len(self.cached_tokens) + self.position_shift

    @property
    def prefilling(self) -> bool:
        return self.job is not None and self.prompt_cursor < len(self.job.prompt_tokens)

    def add_to_batch(self, batch: llama_cpp.llama_batch, token: int, *, want_logits: bool) -> int:
        """Put `token` into `batch` at this sequence's next position (it joins cached_tokens); its batch row."""
        index = add_to_batch(batch, token, self.next_position, self.seq_id, logits=want_logits)
        self.cached_tokens.append(token)
        return index

    def emit_pending(self) -> None:
        """Send the text and logprobs held back so far as one delta (a verified draft's tokens go out together)."""
        if self.pending_text or self.pending_logprobs:
            self.job.emit(TokenDelta(self.pending_text, tuple(self.pending_logprobs), self.completion_tokens))
            self.pending_text, self.pending_logprobs = "", []


def common_prefix_length(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index
