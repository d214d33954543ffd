"""The llama.cpp scheduler: one thread owns the context and decodes every active sequence together.

Each step builds one `llama_batch` holding one token per decoding sequence plus a chunk of prompt tokens
for sequences still reading their prompt, calls `llama_decode` once, then samples each sequence that
produced logits with its own sampler chain. Requests join between steps (FIFO); a finished or cancelled
sequence frees its slot at once, but its KV stays cached so the next prompt sharing its prefix skips it.
With a persistent prompt cache, a finished sequence's state is also handed to the cache's writer thread, and a
job that found a longer prefix on disk has that state loaded into its sequence when it starts.
"""

from __future__ import annotations

import logging
import threading
import time

import llama_cpp

from backends.answer_steering import DEFAULT_STEERING, Steering, SteeringOptions
from backends.base import GenerationFinished, KvCacheUsage, Usage
from backends.job_queue import JobQueue
from backends.llamacpp.block_ledger import BlockLedger
from backends.llamacpp.checkpoints import TAIL, StateCheckpoints
from backends.llamacpp.draft_model import DraftModel
from backends.llamacpp.kv_layout import GATHER_FROM_PROMPT_TOKENS, KvLayout
from backends.llamacpp.lora import AdapterTurns, LlamaLoraSet, apply_adapters, key_of, prompt_cache_of
from backends.llamacpp.media import Projector
from backends.llamacpp.model import LlamaContext, LlamaModel
from backends.llamacpp.prompt_cache import CachedPrefix, PromptCache
from backends.llamacpp.sampling import SamplerChain, token_logprobs
from backends.llamacpp.sequences import SequenceJob, Slot, common_prefix_length
from backends.llamacpp.speculation import NO_SPECULATION, SpeculationOptions
from backends.llamacpp.speculative_steps import SpeculativeSteps
from backends.step_outbox import StepOutbox
from backends.text_output import IncrementalDetokenizer, StopStringFilter
from errors import EngineFailure

logger = logging.getLogger(__name__)

# A free slot whose sequence shares less than this share of a new prompt is not worth evicting for it: an empty slot,
# or the least recently used one, takes the prompt instead (llama-server's --slot-prompt-similarity, same default)
SLOT_SIMILARITY = 0.1

class Scheduler:
    def __init__(
        self,
        model: LlamaModel,
        context: LlamaContext,
        n_slots: int,
        seq_ctx: int,
        max_queue: int,
        prompt_cache: PromptCache | None = None,
        steering: SteeringOptions = DEFAULT_STEERING,
        speculation: SpeculationOptions = NO_SPECULATION,
        draft_model: DraftModel | None = None,
        projector: Projector | None = None,
        checkpoints: tuple[int, int] = (0, 0),
        event_block_size: int = 0,
    ) -> None:
        """`checkpoints`: (most kept per sequence, spacing along a long prompt) for a model with recurrent state;
        `event_block_size`: keep a ledger of held blocks for KV events (0: none)."""
        self.model = model
        self.steering = steering
        self.projector = projector  # decodes media embeddings (models with an mmproj)
        self.prompt_cache = prompt_cache
        self.context = context
        self.seq_ctx = seq_ctx
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self._queue: JobQueue[SequenceJob] = JobQueue(max_queue)
        self._batch = llama_cpp.llama_batch_init(context.n_batch, 0, 1)
        self._outbox = StepOutbox()  # what the sequences emit during a step reaches the event loop when it ends
        # Recurrent state cannot be cut back: prefixes are reused by returning to checkpoints (checkpoints.py)
        self.checkpoints = StateCheckpoints(context, n_slots, *checkpoints) if model.has_recurrent_state else None
        self.ledger = BlockLedger(event_block_size) if event_block_size else None  # (for a router: --kv-events)
        # One cache for all slots: idle sequences' cells are gathered before a long prompt (kv_layout.py). Not with
        # recurrent state, whose checkpoints are kept beside the cells.
        self.kv_layout = KvLayout(context) if context.kv_unified and self.checkpoints is None else None
        self.speculative_steps = SpeculativeSteps(context, self._batch, speculation, seq_ctx, draft_model, self._sample)
        self._adapter_turns = AdapterTurns(lambda adapters: apply_adapters(context, adapters))
        self._stepping = threading.Lock()  # held by the thread while it admits and steps (see forget_adapters)
        self._uses = 0  # slots taken so far (each slot remembers when it was last taken)
        self.steps = 0  # steps done (a worker's watchdog sees work waiting while it stands still)
        self._thread = threading.Thread(target=self._run, name="llamacpp-scheduler", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- event-loop side

    def submit(self, job: SequenceJob) -> None:
        self._queue.submit(job, starts_at_once=self._has_free_slot())

    def cancel(self, job: SequenceJob) -> bool:
        """Stop `job`; True if it was still queued (nothing of it was evaluated)."""
        job.cancelled = True
        return self._queue.cancel(job)

    def longest_cached_prefix(self, tokens: list[int], adapters: LlamaLoraSet | None = None) -> int:
        """Tokens of `tokens` some slot already holds, computed with `adapters` (read from the event loop: a hint,
        not a promise)."""
        key = key_of(adapters)
        return max((self._returnable(slot, common_prefix_length(list(slot.cached_tokens), tokens))
                    for slot in self.slots if slot.adapter_key == key), default=0)

    def _returnable(self, slot: Slot, length: int) -> int:
        """How much of a shared prefix of `length` tokens the slot's sequence can serve (all of it, unless its
        recurrent state can only return to a checkpoint)."""
        if self.checkpoints is None:
            return length
        return self.checkpoints.restorable(slot.seq_id, len(slot.cached_tokens), length)

    def forget_adapters(self, adapters: LlamaLoraSet) -> None:
        """Take `adapters` off the context before they are freed (blocking: waits for the step running now)."""
        with self._stepping:
            self._adapter_turns.forget(adapters)

    @property
    def active_sequences(self) -> int:
        return sum(1 for slot in self.slots if slot.job is not None)

    def kv_cache_usage(self) -> KvCacheUsage:
        """Cells holding the slots' tokens (an idle slot's are kept for the next turn, so they count), of n_ctx."""
        return KvCacheUsage(sum(len(slot.cached_tokens) for slot in self.slots), self.context.n_ctx)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def shutdown(self) -> None:
        """Stop taking work, let everything already accepted finish, then stop the thread."""
        self._queue.close()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)

    # ---------------------------------------------------------------- scheduler thread

    def _free_slots(self) -> int:
        return sum(1 for slot in self.slots if slot.job is None)

    def _has_free_slot(self) -> bool:
        return self._free_slots() > 0

    def _run(self) -> None:
        while True:
            admitted = self._queue.take(self._free_slots, busy=lambda: self.active_sequences > 0)
            if admitted is None:
                return
            with self._stepping:
                self._admit(admitted)
                try:
                    self._step()
                except Exception as exc:  # a bug or decode failure must not kill the thread and hang clients
                    logger.exception("Scheduler step failed")
                    self._fail_active(EngineFailure(f"The engine failed while generating: {exc}"))
                self._outbox.flush()
                self.steps += 1

    def _admit(self, jobs: list[SequenceJob]) -> None:
        """Move taken jobs into free slots: the slot whose cached KV shares the longest prefix, if it shares enough
        of the prompt to be worth taking over; else an empty slot, else the one used longest ago. (Picking the
        longest prefix alone made every new conversation take the slot of another one with which it shared just
        the template's first tokens, evicting it while empty slots waited.)

        A job naming its conversation (`affinity`: a session id, a prompt_cache_key) goes back to the slot that
        key used last, whatever it shares (an edited conversation still replaces only its own). A new key keeps
        out of the slots other keys hold while another is free: agents' sessions often share a long system
        prompt, which alone would make a new session take over a live one's slot and its history."""
        for job in jobs:
            job.emit = self._outbox.holding(job.emit)
            slot = self._slot_for(job)
            self._uses += 1
            slot.last_used = self._uses
            slot.affinity = job.affinity
            try:
                self._start(slot, job)
            except Exception as exc:  # one bad request must not take the scheduler thread down
                logger.exception("Could not start a sequence")
                slot.job = job
                self._abort(slot, EngineFailure(f"The engine could not start this request: {exc}"))

    def _slot_for(self, job: SequenceJob) -> Slot:
        free = [slot for slot in self.slots if slot.job is None]
        if job.affinity is not None:
            if own := [slot for slot in free if slot.affinity == job.affinity]:
                return max(own, key=lambda s: common_prefix_length(s.cached_tokens, job.prompt_tokens))
            unclaimed = [slot for slot in free if slot.affinity is None]
            if not unclaimed:  # every free slot holds another named conversation: the one idle longest gives way
                return min(free, key=lambda s: s.last_used)
            free = unclaimed
        shared = {slot.seq_id: common_prefix_length(slot.cached_tokens, job.prompt_tokens)
                  if slot.adapter_key == job.adapter_key else -1 for slot in free}
        slot = max(free, key=lambda s: shared[s.seq_id])
        if shared[slot.seq_id] < SLOT_SIMILARITY * len(job.prompt_tokens):
            slot = min(free, key=lambda s: (len(s.cached_tokens) > 0, s.last_used))
        return slot

    def _reusable_prefix(self, slot: Slot, job: SequenceJob) -> int:
        """Prompt tokens whose KV `slot` holds and can serve; the last prompt token is always evaluated (logits),
        except for a prefill-only job, which needs no logits.

        A sliding-window cache keeps only the last `n_swa` positions of a sequence. Reusing a prefix of length
        n needs positions n - n_swa .. n, so a sequence whose oldest cached position is newer than that offers
        nothing (llama-server applies the same rule)."""
        prompt = job.prompt_tokens
        limit = len(prompt) if job.prefill_only else len(prompt) - 1
        length = min(common_prefix_length(slot.cached_tokens, prompt), limit)
        if length <= 0 or slot.adapter_key != job.adapter_key:  # KV computed with other adapters is not this
            return 0
        for span in job.media:  # never into the middle of an image: its positions attend to each other
            if span.start < length < span.end:
                length = span.start
        if self.checkpoints is not None:  # (llama.cpp's oldest position of a hybrid is its recurrent state's)
            return self._returnable(slot, length)
        needed_from = max(0, job.position_of(length) - self.model.n_swa) if self.model.n_swa else 0
        return length if self.context.first_position(slot.seq_id) <= needed_from else 0

    def _start(self, slot: Slot, job: SequenceJob) -> None:
        prompt, previous = job.prompt_tokens, slot.cached_tokens
        reuse = self._reusable_prefix(slot, job)
        # Another sequence (even one still generating) may hold a longer prefix, e.g. the same system prompt:
        # share its KV cells instead of recomputing them. Only a unified cache can: there cells just gain a
        # sequence id (llama.cpp cannot copy between per-slot streams of sliding-window caches).
        shared, donor = 0, slot
        if self.context.kv_unified:
            donor = max(self.slots, key=lambda s: self._reusable_prefix(s, job) if s is not slot else -1)
            shared = self._reusable_prefix(donor, job) if donor is not slot else 0
        stored, from_donor = job.cached_prefix, False
        if stored is not None and len(stored.tokens) > max(reuse, shared):
            reuse = self._restore(slot, job, stored)
            self._cleared(slot.seq_id)  # (its cells are the loaded state's, its own)
        elif shared > reuse:
            self.context.clear_sequence(slot.seq_id)
            self.context.copy_prefix(donor.seq_id, slot.seq_id, job.position_of(shared))
            if self.kv_layout is not None:
                self.kv_layout.shared(donor.seq_id, slot.seq_id, job.position_of(shared))
            reuse = shared
            if self.checkpoints is not None and not self.checkpoints.share(
                    donor.seq_id, len(donor.cached_tokens), slot.seq_id, shared, job.position_of(shared)):
                self.context.clear_sequence(slot.seq_id)
                reuse = 0
            from_donor = True  # (the slot's checkpoints are the donor's now)
        elif reuse == 0 or not self._cut(slot, reuse, job.position_of(reuse)):
            self.context.clear_sequence(slot.seq_id)
            self._cleared(slot.seq_id)
            reuse = 0
        if self.kv_layout is not None and len(prompt) - reuse >= GATHER_FROM_PROMPT_TOKENS:
            reuse = self._gather_idle_sequences(slot, reuse, len(prompt) - reuse)
        slot.cached_tokens = prompt[:reuse]
        slot.position_shift = job.position_of(reuse) - reuse
        kept = common_prefix_length(previous, slot.cached_tokens)  # what the slot held that still stands
        if self.checkpoints is not None:  # those past what stands describe another sequence
            self.checkpoints.keep_within(slot.seq_id, reuse if from_donor else kept)
        if self.ledger is not None:
            self.ledger.sync(slot.seq_id, kept, slot.cached_tokens, job.adapter_key)
        slot.adapter_key = job.adapter_key
        job.cached_prefix = None  # the state bytes are in the KV now (or rejected): free them
        slot.job = job
        slot.queued_seconds = time.monotonic() - job.submitted_at
        slot.prompt_cursor = reuse
        slot.reused_tokens = reuse
        slot.next_token = None
        slot.completion_tokens = 0
        slot.pending_logprobs = []
        slot.pending_text = ""
        slot.media_due = None
        slot.snapshot_at = self._prompt_snapshot_point(job, reuse)
        slot.checkpoint_stops = [] if self.checkpoints is None else self.checkpoints.points(
            len(prompt), reuse, lambda point: any(span.start < point < span.end for span in job.media))
        # (penalties look back over the prompt's tokens: media placeholders are none)
        slot.sampler = SamplerChain(self.model, job.sampling, [t for t in prompt if t >= 0], job.grammar)
        slot.steering = Steering(self.model, job.grammar, job.max_tokens, self.steering, job.reasoning,
                                 job.answer_floor)
        slot.forced = []
        slot.drafter = self.speculative_steps.drafter_for(job)
        slot.detokenizer = IncrementalDetokenizer()
        slot.stop_filter = StopStringFilter(job.stop)

    def _gather_idle_sequences(self, starting: Slot, reuse: int, to_compute: int) -> int:
        """Before a long prompt: gather the idle sequences' cells, and the starting slot's reused prefix last (the
        prompt's cells then follow it), so the prompt's cells lie together (kv_layout.py). Returns what the
        starting slot still reuses."""
        idle = [slot for slot in self.slots if slot.job is None and slot is not starting and slot.cached_tokens]
        order = [slot.seq_id for slot in idle] + ([starting.seq_id] if reuse else [])
        gathered = self.kv_layout.gather(order)
        if gathered.moved:
            logger.info("Gathered %d idle sequences' KV cells (%.1f MB) in %.1f ms before %d prompt tokens",
                        gathered.moved, gathered.bytes / 1e6, gathered.seconds * 1000, to_compute)
        lost = set(gathered.lost)
        for slot in idle:
            if slot.seq_id in lost:
                self._forget(slot)
        return 0 if starting.seq_id in lost else reuse  # (its sequence is empty: the caller records the rest)

    def _cleared(self, seq_id: int) -> None:
        if self.kv_layout is not None:
            self.kv_layout.cleared(seq_id)

    def _cut(self, slot: Slot, length: int, position: int) -> bool:
        """Cut the slot's sequence back to its first `length` tokens (a length `_reusable_prefix` gave), whose
        next position is `position`."""
        if self.checkpoints is not None:
            return self.checkpoints.return_to(slot.seq_id, len(slot.cached_tokens), length, position)
        return self.context.remove_tokens(slot.seq_id, position)

    def _prompt_snapshot_point(self, job: SequenceJob, reuse: int) -> int | None:
        """Where to save the prompt's state on its way in: all but its last token, the state an identical prompt
        restores later (a restart, a retry, a regenerate) before evaluating that token for its logits. The end
        of the sequence is saved too (for follow-ups), but a state cannot be cut back in general (sliding-window
        and recurrent caches forget), so a repeat needs a state of its own. With recurrent state, the point is
        the checkpoint's (a few tokens before the end), which the conversation's next turn shares too."""
        cache = self._cache_for(job)
        point = len(job.prompt_tokens) - (1 if self.checkpoints is None else TAIL)
        if job.prefill_only or cache is None or point < reuse or not cache.wants(job.prompt_tokens[:point]):
            return None
        if any(span.start < point < span.end for span in job.media):  # never inside an image
            return None
        return point

    def _save_prompt_snapshot(self, slot: Slot) -> None:
        """The sequence holds exactly its prompt up to `snapshot_at`: hand that state to the cache's writer."""
        slot.snapshot_at = None
        self._cache_for(slot.job).offer(tuple(slot.cached_tokens), self.context.sequence_state(slot.seq_id))

    def _decode_media(self, slot: Slot) -> None:
        """Decode the image (or audio) the slot's prompt continues with, in its own llama_decode (embeddings, not
        tokens), like a prompt chunk of its size; its placeholders join the sequence's tokens."""
        span, slot.media_due = slot.media_due, None
        try:
            self.projector.decode(self.context, span, slot.seq_id, slot.next_position, self.context.n_batch)
        except Exception as exc:  # this sequence's media failed: end it alone
            logger.exception("Decoding media failed")
            self._abort(slot, EngineFailure(f"The engine could not read this request's {span.kind}: {exc}"))
            return
        slot.cached_tokens.extend(slot.job.prompt_tokens[span.start:span.end])
        slot.position_shift += span.positions - span.length
        slot.prompt_cursor = span.end
        span.embeddings = None  # in the KV now

    def _restore(self, slot: Slot, job: SequenceJob, stored: CachedPrefix) -> int:
        """Load a state from the disk cache into the slot's sequence; returns the prompt tokens it covers."""
        restored = self.context.load_sequence_state(slot.seq_id, stored.state)
        self._cache_for(job).record_restore(stored, restored)
        return len(stored.tokens) if restored else 0

    def _step(self) -> None:
        self._drop_cancelled()
        batch = self._batch
        batch.n_tokens = 0
        active = [slot for slot in self.slots if slot.job is not None]
        for slot in active:
            slot.batch_index = -1
        if active:  # one adapter set per decode (llama.cpp applies adapters per context): the others wait
            turn = self._adapter_turns.choose({slot.job.adapter_key: slot.job.adapters for slot in active})
            active = [slot for slot in active if slot.job.adapter_key == turn]
        # Decoding sequences first (one token each) so running streams never wait behind a long prompt.
        for slot in active:
            if slot.next_token is not None:
                slot.batch_index = slot.add_to_batch(batch, slot.next_token, want_logits=True)
                slot.next_token = None
        self.speculative_steps.add_drafts(active)
        decode_rows = batch.n_tokens
        for slot in active:
            if slot.prefilling:
                self._add_prompt_chunk(slot)
        if batch.n_tokens:
            started = time.perf_counter()
            status = self.context.decode(batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}")
            if batch.n_tokens == decode_rows:
                self.speculative_steps.observe_step(decode_rows, time.perf_counter() - started)
        for slot in active:
            if slot.media_due is not None:
                self._decode_media(slot)
        for slot in active:
            if slot.batch_index >= 0:
                try:
                    self._sample(slot)
                    if slot.draft:
                        self.speculative_steps.verify(slot)
                except Exception as exc:  # one sequence's sampling failure ends that sequence only
                    logger.exception("Sampling failed")
                    if slot.job is not None:  # (it may have finished before the failure)
                        self._abort(slot, EngineFailure(f"The engine failed while generating: {exc}"))
            elif slot.job.prefill_only and not slot.prefilling:
                self._finish(slot, "stop")
        if self.ledger is not None:  # what the step evaluated (drafts not yet verified are not held)
            for slot in active:
                self.ledger.extend(slot.seq_id, slot.cached_tokens, slot.adapter_key, slot.committed_length)

    def _add_prompt_chunk(self, slot: Slot) -> None:
        prompt = slot.job.prompt_tokens
        if slot.snapshot_at == slot.prompt_cursor:  # the last step ended there: the KV holds just that prefix
            self._save_prompt_snapshot(slot)
        stops = slot.checkpoint_stops
        while stops and stops[0] <= slot.prompt_cursor:  # (likewise for a checkpoint; media may have passed one)
            if stops.pop(0) == slot.prompt_cursor:
                self.checkpoints.take(slot.seq_id, slot.prompt_cursor)
        media = next((span for span in slot.job.media if span.end > slot.prompt_cursor), None)
        if media is not None and media.start <= slot.prompt_cursor:  # decoded after this step's batch
            slot.media_due = media
            return
        room = self.context.n_batch - self._batch.n_tokens
        end = min(len(prompt), slot.prompt_cursor + room, media.start if media is not None else len(prompt))
        if slot.snapshot_at is not None:  # stop there this step; the snapshot is taken before the next chunk
            end = min(end, slot.snapshot_at)
        if stops:
            end = min(end, stops[0])
        for position in range(slot.prompt_cursor, end):
            is_last = position == len(prompt) - 1 and not slot.job.prefill_only
            index = slot.add_to_batch(self._batch, prompt[position], want_logits=is_last)
            if is_last:
                slot.batch_index = index
        slot.prompt_cursor = end
        if media is not None and end == media.start:  # the text before it is in this batch: the media follows it
            slot.media_due = media

    def _sample(self, slot: Slot) -> None:
        job, steering = slot.job, slot.steering
        if slot.forced:
            token, steered = slot.forced.pop(0), False
            slot.sampler.accept(token)
        else:
            token, steered = slot.sampler.sample(
                self.context.ptr, slot.batch_index, lambda pick: steering.boost_for(pick, slot.completion_tokens)
            )
        steering.observe(token, steered)
        slot.forced = slot.forced or steering.forced_tokens()
        slot.completion_tokens += 1
        if slot.drafter is not None:
            slot.drafter.push(token)
        if job.top_logprobs is not None and not self.model.is_end_of_generation(token):
            logits = self.context.logits(slot.batch_index)
            slot.pending_logprobs.append(token_logprobs(self.model, logits, token, job.top_logprobs))
        if self.model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        piece = self.model.token_text(token) if token in job.shown_special_tokens else self.model.piece(token)
        text = slot.stop_filter.push(slot.detokenizer.push(piece))
        if slot.stop_filter.stopped:
            self._finish(slot, "stop", text)
            return
        if text:
            slot.pending_text += text
            if not slot.draft:  # while a draft is verified, its tokens go out together (one event, not one each)
                slot.emit_pending()
        if slot.completion_tokens >= job.max_tokens or slot.committed_length >= self.seq_ctx:
            self._finish(slot, "length")
            return
        slot.next_token = token

    def _finish(self, slot: Slot, reason: str, text: str = "") -> None:
        self.speculative_steps.drop_unverified(slot)  # before the state is saved: the KV holds only the real sequence
        job, steering = slot.job, slot.steering
        if reason == "stop" and steering.closed_by_budget:
            reason = "length"  # it ended where the budget made it end (still valid JSON): say so
        if steering.loop_breaks:
            logger.info("A constrained answer repeated itself: closed where it began another element (%d picks)",
                        steering.loop_breaks)
        if not slot.stop_filter.stopped:
            text += slot.stop_filter.push(slot.detokenizer.flush())
            text += slot.stop_filter.flush()
        slot.pending_text += text
        slot.emit_pending()
        usage = Usage(
            prompt_tokens=len(job.prompt_tokens),
            completion_tokens=slot.completion_tokens,
            cached_tokens=slot.reused_tokens,
            reasoning_tokens=steering.reasoning.tokens,
            drafted_tokens=slot.drafter.drafted if slot.drafter else 0,
            accepted_tokens=slot.drafter.accepted if slot.drafter else 0,
            queued_seconds=slot.queued_seconds,
        )
        job.emit(GenerationFinished(finish_reason=reason, usage=usage, stop_sequence=slot.stop_filter.matched))
        # After the answer is out: copying the sequence's state for the disk cache (13 MB for a 6k-token hybrid
        # prompt, 3.5 ms) would delay every answer's end by that much. Nothing runs on the slot before it (same
        # thread).
        self._save_to_disk_cache(slot)
        self._release(slot)

    def _save_to_disk_cache(self, slot: Slot) -> None:
        """Hand a snapshot of the finished sequence to the cache's writer thread (the write itself is off-thread)."""
        job = slot.job
        cache = self._cache_for(job)
        if cache is None or not cache.wants(slot.cached_tokens, force=job.prefill_only):
            if job.on_saved:
                job.on_saved(cache is not None)
            return
        cache.offer(tuple(slot.cached_tokens), self.context.sequence_state(slot.seq_id), job.on_saved)

    def _cache_for(self, job: SequenceJob) -> PromptCache | None:
        """The disk cache of the job's adapter set (states computed with other adapters are kept apart)."""
        return prompt_cache_of(job.adapters, self.prompt_cache)

    def _release(self, slot: Slot) -> None:
        self.speculative_steps.release(slot)
        if slot.sampler is not None:
            slot.sampler.free()
        slot.job = None
        slot.sampler = None
        slot.steering = None
        slot.detokenizer = None
        slot.stop_filter = None
        slot.next_token = None
        slot.batch_index = -1
        # cached_tokens keeps exactly what was decoded (even a prompt cut off mid-prefill): the next request
        # sharing that prefix reuses it.

    def _drop_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._release(slot)

    def _fail_active(self, error: Exception) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._abort(slot, error)

    def _abort(self, slot: Slot, error: Exception) -> None:
        """End a sequence with an error. Its KV state is unknown after a failure, so forget its cache."""
        slot.job.emit(error)
        self._release(slot)
        self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        """Empty the slot's sequence and everything kept about what it held."""
        self.context.clear_sequence(slot.seq_id)
        self._cleared(slot.seq_id)
        slot.cached_tokens, slot.position_shift = [], 0
        if self.ledger is not None:
            self.ledger.truncate(slot.seq_id, 0)
        if self.checkpoints is not None:
            self.checkpoints.keep_within(slot.seq_id, 0)
