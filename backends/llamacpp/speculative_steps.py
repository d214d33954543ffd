"""The scheduler's speculative steps (see speculation.py for how guesses are made): guessed tokens join a
sequence's row in the step's batch, each with its own logits; after the step they are checked by sampling, the
confirmed run goes out as one delta, and the rest is taken back out of the sequence's KV."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp

from backends.llamacpp.draft_model import DraftModel
from backends.llamacpp.model import LlamaContext
from backends.llamacpp.row_cost import TILE, RowCost
from backends.llamacpp.sequences import SequenceJob, Slot
from backends.llamacpp.speculation import DraftPool, SequenceDrafter, SpeculationOptions


@dataclass
class StepDraft:
    """A sequence's guesses for this step, before they join the batch; the last `padding` of them only fill the
    step's rows to a whole tile (see _round_to_tiles)."""

    slot: Slot
    tokens: list[int]
    padding: int = 0


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
        with busy drafts, 105 without), nor from a draft model (its guesses come with no match length).
        Where rows past whole tiles cost extra on this machine (row_cost.py), the step's rows are then rounded to
        whole tiles: padded with a few more guessed tokens, or the drafts' last rows cut, whichever is faster."""
        decoding = [slot for slot in active if slot.batch_index >= 0]
        drafts = self._drafts(decoding)
        if (self.draft_model is None and self.context.kv_unified
                and not any(slot.prefilling for slot in active)):  # (a prompt chunk's rows follow: not known yet)
            self._round_to_tiles(decoding, drafts)
        for draft in drafts.values():
            slot = draft.slot
            slot.draft, slot.padding = draft.tokens, draft.padding
            slot.draft_rows = [slot.add_to_batch(self.batch, token, want_logits=True) for token in draft.tokens]
            slot.unverified = len(draft.tokens)

    def _drafts(self, decoding: list[Slot]) -> dict[int, StepDraft]:
        """The sequences guessing this step, by seq_id, with their guesses."""
        if len(decoding) > self.options.max_sequences:
            return {}
        busy = len(decoding) > self.options.few_sequences
        if busy and (self.draft_model is not None or not self.context.kv_unified):
            return {}
        shortest = self.options.busy_ngram_min if busy else 0
        row_cost = self.busy_row_cost(len(decoding)) if busy else None
        wanted: dict[int, tuple[Slot, int]] = {}
        for slot in decoding:
            if slot.drafter is None or slot.forced:
                continue
            left = self._room(slot)
            if count := (slot.drafter.busy_budget(left, row_cost) if busy
                          else slot.drafter.budget(left)):
                wanted[slot.seq_id] = (slot, count)
        if self.draft_model is not None and wanted:
            drafts = self.draft_model.propose({seq: (slot.drafter.tokens, n) for seq, (slot, n) in wanted.items()})
            for seq_id, draft in drafts.items():
                wanted[seq_id][0].drafter.drafted += len(draft)
        else:
            drafts = {seq: slot.drafter.lookup(n, self._others(slot, decoding), shortest)
                      for seq, (slot, n) in wanted.items()}
        return {seq_id: StepDraft(wanted[seq_id][0], draft) for seq_id, draft in drafts.items() if draft}

    def _room(self, slot: Slot) -> int:
        """Tokens the sequence may still be given beyond the next one (max_tokens, its context)."""
        return min(slot.job.max_tokens - slot.completion_tokens, self.seq_ctx - len(slot.cached_tokens)) - 1

    def _others(self, slot: Slot, decoding: list[Slot]) -> tuple[SequenceDrafter, ...]:
        """The drafters a sequence may copy from besides its own (the pool, if on)."""
        if not self.options.pool_tokens:  # (off: each sequence drafts from its own tokens alone)
            return ()
        live = tuple(other.drafter for other in decoding if other.drafter is not None)
        return tuple(other for other in live + self.pool.finished() if other is not slot.drafter)

    def _round_to_tiles(self, decoding: list[Slot], drafts: dict[int, StepDraft]) -> None:
        """Round the step's row count to whole tiles, by this machine's measured step times (row_cost.py: on an
        AVX-512 EPYC 7 rows cost 4.05 one-row steps, 8 rows 3.47), whichever is faster per expected token (a guessed
        row is worth its drafter's acceptance so far; a sequence's last token repeated, nothing): padded up to the
        next whole tile (drafts continued by lookup, else guesses for sequences not drafting), or the drafts' last
        rows cut. Drafts are continued whenever the lookup has the tokens (the next tile's rows cost little on tiled
        CPUs); guesses for others are added only where measured to pay; where the step's own count is not timed yet,
        nothing changes."""
        rows = len(decoding) + sum(len(draft.tokens) for draft in drafts.values())
        spilled, short = rows % TILE, -rows % TILE
        now = self.row_cost.step_seconds(rows)
        if not spilled or now is None:
            return
        expected = len(decoding) + sum(self._worth(draft.slot) * len(draft.tokens) for draft in drafts.values())
        padded = self.row_cost.step_seconds(rows + short)
        if rows + short <= self.context.n_batch:
            padding = self._padding(decoding, drafts, short)
            gain = sum(self._worth(slot) * len(extra) for slot, extra, guessed in padding.values() if guessed)
            continued = all(slot.seq_id in drafts for slot, _, _ in padding.values())
            # (drafts continued are padded whatever the times say: a decision that flips with the moving averages
            # gives a greedy repeat other step shapes, and SmolLM2's answers then parted at near ties in CI)
            if sum(len(extra) for _, extra, _ in padding.values()) == short and (
                    continued or (padded is not None and (expected + gain) / padded >= expected / now)):
                for seq_id, (slot, extra, _) in padding.items():
                    draft = drafts.setdefault(seq_id, StepDraft(slot, []))
                    draft.tokens, draft.padding = draft.tokens + extra, draft.padding + len(extra)
                return
        cut = self._cut(drafts, spilled)  # (fewer where the drafts are shorter: then none are left)
        trimmed = self.row_cost.step_seconds(rows - len(cut))
        if not cut or trimmed is None:
            return
        if (expected - sum(self._worth(drafts[seq_id].slot) for seq_id in cut)) / trimmed > expected / now:
            for seq_id in cut:
                draft = drafts[seq_id]
                draft.tokens = draft.tokens[:-1]
                draft.slot.drafter.drafted -= 1
                if not draft.tokens:
                    del drafts[seq_id]

    @staticmethod
    def _worth(slot: Slot) -> float:
        """Tokens a guessed row of the sequence is expected to give: its guesses' acceptance so far (a prior of 1/2)."""
        return (slot.drafter.accepted + 1) / (slot.drafter.drafted + 2)

    @staticmethod
    def _cut(drafts: dict[int, StepDraft], count: int) -> list[int]:
        """Whose drafts lose their last row, `count` rows in all (the longest drafts first; a sequence may repeat)."""
        lengths = {seq_id: len(draft.tokens) for seq_id, draft in drafts.items()}
        cut = []
        for _ in range(count):
            seq_id = max(lengths, key=lengths.get, default=None)
            if seq_id is None or lengths[seq_id] == 0:
                break
            lengths[seq_id] -= 1
            cut.append(seq_id)
        return cut

    def _padding(self, decoding: list[Slot], drafts: dict[int, StepDraft],
                 short: int) -> dict[int, tuple[Slot, list[int], bool]]:
        """Up to `short` more guessed tokens by sequence, and whether they are a lookup's guess: drafts continued by
        lookup first, then guesses for sequences not drafting (a lookup of any length, or their last token again)."""
        padding: dict[int, tuple[Slot, list[int], bool]] = {}
        for slot in sorted(decoding, key=lambda s: s.seq_id not in drafts):
            if short == 0:
                break
            if slot.drafter is None or slot.forced:
                continue
            draft = drafts[slot.seq_id].tokens if slot.seq_id in drafts else []
            room = min(short, self._room(slot) - len(draft))
            if room <= 0:
                continue
            extra = slot.drafter.continuation(draft, len(draft) + room, self._others(slot, decoding))[len(draft):]
            if extra:
                padding[slot.seq_id] = (slot, extra, True)
            elif not draft:
                padding[slot.seq_id] = (slot, extra := [slot.drafter.tokens[-1]], False)
            short -= len(extra)
        return padding

    def busy_row_cost(self, sequences: int) -> float:
        """What a guessed row costs, in tokens, in a busy step of `sequences`: measured (row_cost.py), at least
        busy_row_cost (a fit over few row counts can read too cheap a row; a guess below it pays too little)."""
        cost = self.row_cost.of_a_token(sequences)
        return self.options.busy_row_cost if cost is None else max(self.options.busy_row_cost, cost)

    def observe_step(self, rows: int, seconds: float) -> None:
        """A decode-only step's rows and `llama_decode` seconds (prompt chunks cost a row differently: not given)."""
        self.row_cost.observe(rows, seconds)

    def verify(self, slot: Slot) -> None:
        """After the sampled token's row gave the next token: while that token is the drafted one (already in the
        KV, its row holding the logits that follow it), sample again from the drafted row. Then drop what is left."""
        accepted, guessed = 0, len(slot.draft) - slot.padding  # (padding rows are not the drafter's guesses)
        for token, row in zip(slot.draft, slot.draft_rows, strict=True):
            if slot.job is None or slot.forced or slot.next_token != token:
                break
            accepted += 1
            if accepted <= guessed:
                slot.drafter.accepted += 1  # counted now: sampling may finish the sequence (usage is written then)
            slot.unverified -= 1
            slot.next_token = None
            slot.batch_index = row
            self.sample(slot)
        if slot.drafter is not None and guessed:  # (None once the sequence finished)
            slot.drafter.verified(guessed, min(accepted, guessed))
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
        slot.draft, slot.draft_rows, slot.padding = [], [], 0
