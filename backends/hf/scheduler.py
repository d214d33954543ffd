"""The transformers engine's worker thread: runs waiting requests together as left-padded batches.

Requests that arrive while a batch runs join the next one. A batch prefills every prompt in one forward pass
(left padding, attention mask, explicit positions), then decodes one token per live sequence per step over a
shared KV cache. Each sequence has its own sampler, grammar, stop strings, budget and steering (a reasoning
budget, budget closing and loop breaking, as on the llama.cpp engine: backends/answer_steering.py); one that
finishes (or whose client went away) stops emitting at once and is masked out of later steps, and the batch
ends when all are done. torch runs in inference mode on this thread only; the event loop never waits on it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch

from backends.answer_steering import DEFAULT_STEERING, Steering, SteeringOptions
from backends.base import GenerationFinished, ReasoningControl, SamplingParams, TokenDelta, TokenLogprob, Usage
from backends.engine_support import AnswerFloor, Emit
from backends.hf.grammar import GrammarConstraint
from backends.hf.peft_adapters import BASE_ROW
from backends.hf.sampling import RowSampler, row_logprobs
from backends.hf.vocabulary import TokenizerVocabulary
from backends.job_queue import JobQueue
from backends.text_output import StopStringFilter, TokenTextDecoder
from errors import EngineFailure

logger = logging.getLogger(__name__)



@dataclass(eq=False)
class HFJob:
    prompt_ids: list[int]
    sampling: SamplingParams
    max_tokens: int
    stop: tuple[str, ...]
    top_logprobs: int | None
    constraint: GrammarConstraint | None
    shown_special_ids: frozenset[int] = frozenset()  # special tokens to show as text (tool-call markers)
    emit: Emit = lambda item: None
    cancelled: bool = False
    tenant: str = ""  # who asked: the queue takes turns between tenants
    reasoning: ReasoningControl | None = None  # a thinking model's block: counted, budgeted, closed
    adapter: str | None = None  # the PEFT adapter its rows run with (None: the base weights)
    answer_floor: AnswerFloor | None = None  # what its grammar-constrained answer takes at least


@dataclass(eq=False)
class _Row:
    job: HFJob
    sampler: RowSampler
    decoder: TokenTextDecoder
    stop_filter: StopStringFilter
    position: int  # position of the next token
    steering: Steering
    forced: list[int] = field(default_factory=list)  # tokens to write next without sampling (a reasoning close)
    completion_tokens: int = 0
    done: bool = False
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)


class BatchScheduler:
    def __init__(self, checkpoint, vocabulary: TokenizerVocabulary, *, max_batch: int, max_queue: int, seq_ctx: int,
                 eos_ids: set[int], steering: SteeringOptions = DEFAULT_STEERING) -> None:
        self.vocabulary = vocabulary
        self.steering = steering
        self.checkpoint = checkpoint  # its model may be wrapped and unwrapped by PEFT adapters (peft_adapters.py)
        self.model_lock = threading.Lock()  # held for each forward pass; adapters change the model between them
        self.tokenizer = checkpoint.tokenizer
        self.device = checkpoint.device
        self.max_batch = max_batch
        self.seq_ctx = seq_ctx
        self.eos_ids = eos_ids
        self.vocab_size = checkpoint.model.config.vocab_size
        self.special_ids = set(self.tokenizer.all_special_ids)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos_ids, default=0)
        self._queue: JobQueue[HFJob] = JobQueue(max_queue)
        self._running: list[_Row] = []
        self.steps = 0  # forward passes done (a worker's watchdog sees work waiting while it stands still)
        self._thread = threading.Thread(target=self._run, name="transformers-batcher", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- event-loop side

    def submit(self, job: HFJob) -> None:
        self._queue.submit(job)

    def cancel(self, job: HFJob) -> bool:
        """Stop `job`; True if it was still queued (nothing of it was evaluated)."""
        job.cancelled = True
        return self._queue.cancel(job)

    @property
    def active_sequences(self) -> int:
        return sum(1 for row in self._running if not row.done)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def shutdown(self) -> None:
        self._queue.close()
        self._thread.join()

    # ---------------------------------------------------------------- worker thread

    def _run(self) -> None:
        while True:
            batch = self._queue.take(lambda: self.max_batch)
            if batch is None:
                return
            try:
                with torch.inference_mode():
                    self._run_batch(batch)
            except Exception as exc:  # a failure must not kill the thread and hang every later request
                logger.exception("Batch failed")
                for row in self._running:
                    if not row.done:
                        row.done = True
                        row.job.emit(EngineFailure(f"The engine failed while generating: {exc}"))
            finally:
                self._running = []

    def _run_batch(self, jobs: list[HFJob]) -> None:
        self._running = rows = [self._new_row(job) for job in jobs]
        width = max(len(job.prompt_ids) for job in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for index, job in enumerate(jobs):  # left padding: every prompt ends in the last column
            input_ids[index, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[index, width - len(job.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self.checkpoint.model)
        logits = self._forward(input_ids, mask, positions, cache)
        while True:
            next_tokens = []
            for index, row in enumerate(rows):
                live = not row.done and not self._drop_if_cancelled(row)
                next_tokens.append(self._step(row, logits[index]) if live else self.pad_id)
            if all(row.done for row in rows):
                return
            step_mask = torch.tensor([[0 if row.done else 1] for row in rows], dtype=torch.long)
            mask = torch.cat([mask, step_mask], dim=1)
            positions = torch.tensor([[row.position - 1] for row in rows], dtype=torch.long)
            logits = self._forward(torch.tensor(next_tokens).view(-1, 1), mask, positions, cache)

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        with self.model_lock:
            extra = {}
            if hasattr(self.checkpoint.model, "peft_config"):  # adapters loaded: name each row's (done rows: none)
                extra["adapter_names"] = [BASE_ROW if row.done else row.job.adapter or BASE_ROW
                                          for row in self._running]
            output = self.checkpoint.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device), past_key_values=cache, use_cache=True, logits_to_keep=1,
                **extra,
            )
        self.steps += 1
        return output.logits[:, -1, :].float().cpu()

    def _new_row(self, job: HFJob) -> _Row:
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        return _Row(job=job, sampler=RowSampler(job.sampling, job.prompt_ids, self.vocab_size),
                    decoder=TokenTextDecoder(decode), stop_filter=StopStringFilter(job.stop),
                    position=len(job.prompt_ids),
                    steering=Steering(self.vocabulary, job.constraint.spec if job.constraint else None,
                                      job.max_tokens, self.steering, job.reasoning, job.answer_floor))

    def _drop_if_cancelled(self, row: _Row) -> bool:
        if row.job.cancelled:
            row.done = True  # the client is gone: stop here, emit nothing more
        return row.done

    def _step(self, row: _Row, raw_logits: torch.Tensor) -> int:
        """Sample one token for a live row, emit its text; returns the token to feed next."""
        job = row.job
        token, steered = (row.forced.pop(0), False) if row.forced else self._sample(row, raw_logits)
        row.sampler.accept(token)
        row.steering.observe(token, steered)
        row.forced = row.forced or row.steering.forced_tokens()  # a spent reasoning budget: the close marker
        row.completion_tokens += 1
        row.position += 1
        if job.top_logprobs is not None and token not in self.eos_ids:
            row.pending_logprobs.append(row_logprobs(raw_logits, token, job.top_logprobs,
                                                      self.vocabulary.token_text))
        if token in self.eos_ids:
            self._finish(row, "stop")
            return token
        visible = token not in self.special_ids or token in job.shown_special_ids
        piece = row.decoder.push(token) if visible else ""
        if job.constraint is not None:
            job.constraint.accept(token, piece)
        text = row.stop_filter.push(piece)
        if row.stop_filter.stopped:
            self._finish(row, "stop", text)
            return token
        if text:
            job.emit(TokenDelta(text, tuple(row.pending_logprobs), row.completion_tokens))
            row.pending_logprobs = []
        if row.completion_tokens >= job.max_tokens or row.position >= self.seq_ctx:
            self._finish(row, "length")
        return token

    def _sample(self, row: _Row, raw_logits: torch.Tensor) -> tuple[int, bool]:
        """The next token, and whether steering changed it from the model's own pick."""
        logits = row.sampler.adjust(raw_logits.clone())
        if row.job.constraint is not None:
            row.job.constraint.mask(logits)
        natural = self._pick(row, logits)
        boost = row.steering.boost_for(natural, row.completion_tokens)
        if boost is None:
            return natural, False
        tokens, amount = boost
        logits[torch.from_numpy(tokens)] += amount  # (tokens the grammar forbids stay at -inf)
        token = self._pick(row, logits)
        return token, token != natural

    @staticmethod
    def _pick(row: _Row, logits: torch.Tensor) -> int:
        """The sampler's pick, never one that breaks the UTF-8 of a constrained answer (then it picks again)."""
        token = row.sampler.pick(logits)
        constraint = row.job.constraint
        if constraint is not None and not constraint.keeps_utf8(token):
            constraint.mask_ill_formed(logits)
            token = row.sampler.pick(logits)
        return token

    def _finish(self, row: _Row, reason: str, text: str = "") -> None:
        steering = row.steering
        if reason == "stop" and steering.closed_by_budget:
            reason = "length"  # it ended where the budget made it end (still valid JSON): say so
        if steering.loop_breaks:
            logger.info("A constrained answer repeated itself: closed where it began another element (%d picks)",
                        steering.loop_breaks)
        if not row.stop_filter.stopped:
            text += row.stop_filter.push(row.decoder.flush())
            text += row.stop_filter.flush()
        if text or row.pending_logprobs:
            row.job.emit(TokenDelta(text, tuple(row.pending_logprobs), row.completion_tokens))
        usage = Usage(prompt_tokens=len(row.job.prompt_ids), completion_tokens=row.completion_tokens,
                      reasoning_tokens=steering.reasoning.tokens)
        row.job.emit(GenerationFinished(finish_reason=reason, usage=usage, stop_sequence=row.stop_filter.matched))
        row.done = True


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)
