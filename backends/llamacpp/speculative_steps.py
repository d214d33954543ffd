"""The scheduler's speculative steps (see speculation.py for how guesses are made): guessed tokens join a
sequence's row in the step's batch, each with its own logits; after the step they are checked by sampling, the
confirmed run goes out as one delta, and the rest is taken back out of the sequence's KV."""

from __future__ import annotations

from backends.base import TokenDelta
from backends.llamacpp.sequences import Slot


class SpeculativeSteps:
    """Mixed into the Scheduler: uses its context, batch, speculation options, draft model and `_sample`."""

    def _add_drafts(self, active: list[Slot]) -> None:
        """Guessed next tokens of decoding sequences, after their sampled token, each with its own logits row;
        only in steps where few sequences decode (`max_sequences`)."""
        decoding = [slot for slot in active if slot.batch_index >= 0]
        if len(decoding) > self.speculation.max_sequences:
            return
        wanted: dict[int, tuple[Slot, int]] = {}
        for slot in decoding:
            if slot.drafter is None or slot.forced:
                continue
            job = slot.job
            left = min(job.max_tokens - slot.completion_tokens, self.seq_ctx - len(slot.cached_tokens)) - 1
            if count := slot.drafter.budget(left):
                wanted[slot.seq_id] = (slot, count)
        if self.draft_model is not None and wanted:
            drafts = self.draft_model.propose({seq: (slot.drafter.tokens, n) for seq, (slot, n) in wanted.items()})
            for seq_id, draft in drafts.items():
                wanted[seq_id][0].drafter.drafted += len(draft)
        else:
            drafts = {seq: slot.drafter.lookup(n) for seq, (slot, n) in wanted.items()}
        for seq_id, draft in drafts.items():
            slot = wanted[seq_id][0]
            slot.draft = draft
            slot.draft_rows = [self._add_to_batch(slot, token, want_logits=True) for token in draft]
            slot.unverified = len(draft)

    def _verify_draft(self, slot: Slot) -> None:
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
            self._sample(slot)
        if slot.drafter is not None:  # None once the sequence finished
            slot.drafter.verified(len(slot.draft), accepted)
        self._drop_unverified(slot)
        if slot.job is not None:
            self._emit_pending(slot)

    def _emit_pending(self, slot: Slot) -> None:
        if slot.pending_text or slot.pending_logprobs:
            slot.job.emit(TokenDelta(slot.pending_text, tuple(slot.pending_logprobs), slot.completion_tokens))
            slot.pending_text, slot.pending_logprobs = "", []

    def _drop_unverified(self, slot: Slot) -> None:
        """Remove the rejected rest of a draft from the sequence's tokens and KV."""
        if slot.unverified:
            del slot.cached_tokens[-slot.unverified:]
            self.context.remove_tokens(slot.seq_id, len(slot.cached_tokens))
            slot.unverified = 0
        slot.draft, slot.draft_rows = [], []
