"""The scheduler's speculative steps (see speculation.py for how guesses are made): guessed tokens join a
sequence's row in the step's batch, each with its own logits; after the step they are checked by sampling, the
confirmed run goes out as one delta, and the rest is taken back out of the sequence's KV."""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp

from backends.llamacpp.draft_model import DraftModel
from backends.llamacpp.model import LlamaContext
from backends.llamacpp.row_cost import RowCost
from backends.llamacpp.sequences import SequenceJob, Slot
from backends.llamacpp.speculation import DraftPool, SequenceDrafter, SpeculationOptions


class SpeculativeSteps:
    """Owned by the scheduler and called from its thread at three points of a step: drafts go into the batch
    after the sampled tokens, each draft is verified after its sequence's token is sampled, and whatever is left
    unverified is dropped before a sequence's state is saved or its slot freed."""

    def __init__(
        self,
        context: LlamaContext,
        batch: llama_cpp.llama_batch,
        options: SpeculationOptions,
        seq_ctx: int,
        draft_model: DraftModel | None,
        sample: Callable[[Slot], None],
    ) -> None:
        self.context = context
        self.batch = batch  # the scheduler's batch: drafts share the step's one decode
        self.options = options
        self.seq_ctx = seq_ctx
        self.draft_model = draft_model  # guesses instead of prompt lookup
        self.pool = DraftPool(options)  # finished sequences' tokens, drafted from too
        self.row_cost = RowCost()  # what a row costs on this machine, from the scheduler's decode-only steps
        # The scheduler's sampling step: verifying a drafted token is sampling from its row, with everything
        # sampling does for a sequence (steering, logprobs, stop strings, finishing it).
        self.sample = sample

    def drafter_for(self, job: SequenceJob) -> SequenceDrafter | None:
        """What guesses the next tokens of a new sequence, if it speculates."""
        speculates = (self.options.enabled and job.speculative and not job.prefill_only
                      and not (job.media and self.draft_model is not None))  # a draft model reads no media
        return SequenceDrafter(job.prompt_tokens, self.options) if speculates else None

    def add_drafts(self, active: list[Slot]) -> None:
        """Guessed next tokens of decoding sequences, after their sampled token, each with its own logits row.
        In a busy step (more than `few_sequences` decoding) a row costs nearly what a token does, so only drafts
        from long matches (`busy_ngram_min`: a loop, a copied block) by sequences whose drafts keep holding, and none
        above `max_sequences`. None either in a busy step of a context with one KV stream per slot: llama.cpp decodes
        a sequence holding more new tokens than the others in a pass of its own there (8 gemma streams: 73-94 tok/s
        with busy drafts, 105 without), nor from a draft model (its guesses come with no match length)."""
        decoding = [slot for slot in active if slot.batch_index >= 0]
        if len(decoding) > self.options.max_sequences:
            return
        busy = len(decoding) > self.options.few_sequences
        if busy and (self.draft_model is not None or not self.context.kv_unified):
            return
        shortest = self.options.busy_ngram_min if busy else 0
        acceptance = self.busy_acceptance(len(decoding)) if busy else None
        wanted: dict[int, tuple[Slot, int]] = {}
        for slot in decoding:
            if slot.drafter is None or slot.forced:
                continue
            job = slot.job
            left = min(job.max_tokens - slot.completion_tokens, self.seq_ctx - len(slot.cached_tokens)) - 1
            if count := (slot.drafter.busy_budget(left, acceptance) if shortest else slot.drafter.budget(left)):
                wanted[slot.seq_id] = (slot, count)
        if self.draft_model is not None and wanted:
            drafts = self.draft_model.propose({seq: (slot.drafter.tokens, n) for seq, (slot, n) in wanted.items()})
            for seq_id, draft in drafts.items():
                wanted[seq_id][0].drafter.drafted += len(draft)
        else:
            pooled = self.options.pool_tokens > 0  # (off: each sequence drafts from its own tokens alone)
            live = tuple(slot.drafter for slot in decoding if slot.drafter is not None) if pooled else ()
            others = live + self.pool.finished()
            drafts = {seq: slot.drafter.lookup(n, tuple(o for o in others if o is not slot.drafter), shortest)
                      for seq, (slot, n) in wanted.items()}
        for seq_id, draft in drafts.items():
            slot = wanted[seq_id][0]
            slot.draft = draft
            slot.draft_rows = [slot.add_to_batch(self.batch, token, want_logits=True) for token in draft]
            slot.unverified = len(draft)

    def busy_acceptance(self, sequences: int) -> float:
        """How often a sequence's guesses must hold to draft in a busy step of `sequences`: busy_acceptance, or a
        row's measured cost in tokens where that is higher (below it, the rows cost more than they win)."""
        cost = self.row_cost.of_a_token(sequences)
        return self.options.busy_acceptance if cost is None else max(self.options.busy_acceptance, cost)

    def observe_step(self, rows: int, seconds: float) -> None:
        """A decode-only step's rows and `llama_decode` seconds (prompt chunks cost a row differently: not given)."""
        self.row_cost.observe(rows, seconds)

    def verify(self, slot: Slot) -> None:
        """After the sampled token's row gave the next token: while that token is the drafted one (already in the
        KV, its row holding the logits that follow it), sample again from the drafted row. Then drop what is left."""
        accepted = 0
        for token, row in zip(slot.draft, slot.draft_rows, strict=True):
            if slot.job is None or slot.forced or slot.next_token != token:
                break
            accepted += 1
            slot.drafter.accepted += 1  # counted now: sampling may finish the sequence (usage is written then)
            slot.unverified -= 1
            slot.next_token = None
            slot.batch_index = row
            self.sample(slot)
        if slot.drafter is not None:  # None once the sequence finished
            slot.drafter.verified(len(slot.draft), accepted)
        self.drop_unverified(slot)
        if slot.job is not None:
            slot.emit_pending()

    def release(self, slot: Slot) -> None:
        """The slot's sequence ended: what it held unverified goes, its tokens stay in the pool for later drafts."""
        self.drop_unverified(slot)
        if slot.drafter is not None and self.draft_model is None:
            self.pool.keep(slot.drafter)
        slot.drafter = None

    def drop_unverified(self, slot: Slot) -> None:
        """Remove the rejected rest of a draft from the sequence's tokens and KV."""
        if slot.unverified:
            del slot.cached_tokens[-slot.unverified:]
            self.context.remove_tokens(slot.seq_id, slot.next_position)
            slot.unverified = 0
        slot.draft, slot.draft_rows = [], []
