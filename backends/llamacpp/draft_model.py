"""A draft model for speculative decoding: a small GGUF with the target's vocabulary guesses the next tokens of
every speculating sequence, greedily, in batched steps of its own context; the scheduler verifies the guesses in
its next decode step exactly as it verifies prompt-lookup drafts (speculation.py), so the output is unchanged.

The draft context holds one sequence per scheduler slot. Before drafting, each sequence's draft KV is brought up
to the target sequence's tokens: what still matches is kept, the rest removed, and the missing tokens fed (a new
prompt in chunks of at most FEED_PER_STEP tokens per scheduler step, so a long prompt never stalls the other
streams; the sequence drafts once it has caught up).
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np

from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel, add_to_batch
from backends.llamacpp.sequences import common_prefix_length

FEED_PER_STEP = 256  # prompt tokens the draft model reads per scheduler step, all sequences together


class DraftModel:
    def __init__(self, path: Path, target: LlamaModel, config: ContextConfig) -> None:
        self.model = LlamaModel(path, repack=target.placement.repack)  # the target's choice is the model's
        try:
            _check_same_vocabulary(self.model, target)
            self.context = LlamaContext(self.model, config)
        except Exception:
            self.model.free()
            raise
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self._held: dict[int, list[int]] = {}  # tokens whose KV each draft sequence holds, in order

    def propose(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """Drafts for sequences `seq_id -> (their tokens so far, most tokens wanted)`; a sequence still reading its
        prompt into the draft context gets none this time."""
        ready = self._catch_up(wanted)
        drafts: dict[int, list[int]] = {seq_id: [] for seq_id in ready}
        rows = dict(ready)  # seq_id -> batch row whose logits give its next draft token
        while rows:
            batch = self._batch
            batch.n_tokens = 0
            for seq_id, row in rows.items():
                token = self._argmax(row)
                drafts[seq_id].append(token)
                if len(drafts[seq_id]) < wanted[seq_id][1]:
                    self._add(seq_id, token, logits=True)
            rows = {seq_id: index for index, seq_id in enumerate(self._batch_sequences())}
            if rows:
                self._decode()
        return drafts

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        self.context.free()
        self.model.free()

    # ---------------------------------------------------------------- internals

    def _catch_up(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, int]:
        """Feed each sequence's missing tokens (within FEED_PER_STEP in all); the sequences whose last token's
        logits are now in the batch, with that row."""
        batch = self._batch
        batch.n_tokens = 0
        last_rows: dict[int, int] = {}
        budget = FEED_PER_STEP
        for seq_id, (tokens, _) in wanted.items():
            held = self._held.setdefault(seq_id, [])
            keep = min(common_prefix_length(held, tokens), len(tokens) - 1)  # the last token is always fed
            if keep < len(held):
                self._cut(seq_id, keep)
            missing = tokens[len(held):]
            if len(missing) > budget:  # a long prompt: read part of it now, draft in a later step
                for token in missing[:budget]:
                    self._add(seq_id, token, logits=False)
                budget = 0
                continue
            for index, token in enumerate(missing):
                self._add(seq_id, token, logits=index == len(missing) - 1)
            budget -= len(missing)
            last_rows[seq_id] = batch.n_tokens - 1
        if batch.n_tokens:
            self._decode()
        return last_rows

    def _cut(self, seq_id: int, keep: int) -> None:
        """Keep the first `keep` tokens of a draft sequence (all of it goes where that cannot be done: a
        sliding-window cache keeps only the last n_swa positions, as the scheduler's own reuse rule says)."""
        needed_from = max(0, keep - self.model.n_swa) if self.model.n_swa else 0
        if keep == 0 or self.context.first_position(seq_id) > needed_from or \
                not self.context.remove_tokens(seq_id, keep):
            self.context.clear_sequence(seq_id)
            keep = 0
        del self._held[seq_id][keep:]

    def _add(self, seq_id: int, token: int, *, logits: bool) -> None:
        held = self._held[seq_id]
        add_to_batch(self._batch, token, len(held), seq_id, logits=logits)
        held.append(token)

    def _batch_sequences(self) -> list[int]:
        return [self._batch.seq_id[index][0] for index in range(self._batch.n_tokens)]

    def _decode(self) -> None:
        status = self.context.decode(self._batch)
        if status != 0:
            raise RuntimeError(f"the draft model's llama_decode returned {status}")

    def _argmax(self, row: int) -> int:
        logits = np.ctypeslib.as_array(self.context.logits(row), shape=(self.model.n_vocab,))
        return int(logits.argmax())


def _check_same_vocabulary(draft: LlamaModel, target: LlamaModel) -> None:
    """Drafted token ids mean nothing to a target with another vocabulary: refuse such a pair at load."""
    if draft.n_vocab != target.n_vocab:
        raise ValueError(f"the draft model has {draft.n_vocab} tokens, the target {target.n_vocab}: they must share "
                         f"a vocabulary")
    step = max(1, draft.n_vocab // 2000)
    for token in range(0, draft.n_vocab, step):
        if draft.token_text(token) != target.token_text(token):
            raise ValueError(f"the draft model's token {token} is {draft.token_text(token)!r}, the target's "
                             f"{target.token_text(token)!r}: they must share a vocabulary")
