"""A thin, typed wrapper over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

Only this module and the scheduler touch raw pointers. The model (weights + vocabulary) is read-only after
loading, so tokenising from the event loop while the scheduler thread decodes is safe.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from backends.answer_steering import only_closes
from backends.llamacpp.log_routing import lines_logged_by_this_thread, route_llama_logs_to_python
from backends.llamacpp.weight_placement import RepackMode, WeightPlacement, placed, weight_buffers
from backends.load_progress import current_load, report
from backends.thread_priority import lower_this_threads_priority
from backends.utf8_validity import Utf8Table

logger = logging.getLogger(__name__)

_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    route_llama_logs_to_python()  # every load: importing llama_cpp.llama (the disk cache does) installs its own
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True)
class ContextConfig:
    n_ctx: int
    n_seq_max: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int
    flash_attn: bool
    kv_unified: bool = False  # one KV buffer for all sequences (prefixes shareable) vs one stream per slot
    swa_full: bool = False  # full-size KV for sliding-window layers: more prefixes reusable, slower long prompts
    embeddings: bool = False  # an embedding context: decode yields pooled vectors, not logits
    pooling_type: int = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED  # unspecified = the GGUF's own pooling


WEIGHTS_SHARE = 0.9  # of a load's progress: reading tensors; the rest is the context and the template


def add_to_batch(batch: llama_cpp.llama_batch, token: int, position: int, seq_id: int, *, logits: bool) -> int:
    """Append one token of one sequence to a llama_batch; returns its row."""
    index = batch.n_tokens
    batch.token[index] = token
    batch.pos[index] = position
    batch.n_seq_id[index] = 1
    batch.seq_id[index][0] = seq_id
    batch.logits[index] = logits
    batch.n_tokens = index + 1
    return index


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


# Above this attention head size, llama.cpp's CPU flash-attention kernel (llama-cpp-python 0.3.36) measured slower
# than plain attention for one sequence on an AMD EPYC: head size 256 (gemma 3, Qwen 3.5) decoded 1.3x faster at 4k
# tokens without it, and a conversation's next turn (94 new tokens after 6.5k) evaluated 3x faster; head size 64
# (SmolLM2) evaluated prompts ~5 % faster with it, decoding the same (`python -m bench.bench_flash_attention`,
# bench_hybrid_turns). 128 was not measured: it keeps llama.cpp's own choice.
CPU_FLASH_ATTENTION_MAX_HEAD_SIZE = 128
# ...unless the context decodes many sequences at once: B one-token sequences a step (one KV stream each) decoded
# 1.13x faster with it at B=16 and 128 tokens of context, 1.31x at 1024, 1.04-1.19x at B=8 (gemma 3, a Xeon with
# AMX; `python -m bench.bench_decode_config`), where one sequence's long chunks lost 5-9 % on that host. A server
# sized for that many streams is mostly decoding several; llama-server and llama-batched-bench keep it on too.
CPU_FLASH_ATTENTION_MIN_SEQUENCES = 8


def flash_attention(setting: str, model: LlamaModel, *, embedding: bool = False, sequences: int = 1) -> bool:
    """Whether a context of `model` uses flash attention, for the `flash_attn` setting (auto / on / off).

    `auto` turns it on where layers run on a GPU and for embedding models (one non-causal pass over short inputs:
    2.6x faster on CPU, bench_embeddings); for generation on the CPU, on unless the attention heads are larger
    than CPU_FLASH_ATTENTION_MAX_HEAD_SIZE and the context holds fewer than CPU_FLASH_ATTENTION_MIN_SEQUENCES
    sequences (`sequences`: its slots)."""
    if setting != "auto":
        return setting == "on"
    if embedding or model.offloads_to_gpu:
        return True
    return (model.attention_head_size <= CPU_FLASH_ATTENTION_MAX_HEAD_SIZE
            or sequences >= CPU_FLASH_ATTENTION_MIN_SEQUENCES)


class LlamaModel:
    """Loaded GGUF weights and vocabulary."""

    def __init__(self, path: Path, n_gpu_layers: int = 0, repack: RepackMode = "auto") -> None:
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.path = path
        self.offloads_to_gpu = n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        progress = current_load()
        if progress is not None:  # the registry is tracking this load: llama.cpp reports the share of data read
            def on_progress(fraction: float, _user_data: object) -> bool:
                progress.report(WEIGHTS_SHARE * fraction, "weights")
                return True  # go on loading

            callback = llama_cpp.llama_progress_callback(on_progress)  # referenced until the load returns
            params.progress_callback = callback
        with placed(repack, params) as placement, lines_logged_by_this_thread() as load_report:
            self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        report(WEIGHTS_SHARE, "context")
        if not self.ptr:
            raise ValueError(f"llama.cpp could not load '{path.name}' (not a valid GGUF model?)")
        self.placement: WeightPlacement = placement.with_buffers(weight_buffers(load_report))
        logger.info("%s: %s", path.name, self.placement.summary())
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._closing_tokens: np.ndarray | None = None
        self._closing_lock = threading.Lock()
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.ptr)
        self.n_swa = llama_cpp.llama_model_n_swa(self.ptr)  # sliding attention window; 0 = none
        self.attention_head_size = self._attention_head_size()
        # Recurrent layers (Mamba, RWKV, Gated DeltaNet, short convolutions; alone or beside attention in hybrids)
        # keep one state per sequence that cannot be cut back to an earlier position.
        self.has_recurrent_state = bool(llama_cpp.llama_model_is_recurrent(self.ptr)
                                        or llama_cpp.llama_model_is_hybrid(self.ptr))
        self.bos_token_id = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_token_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self._piece_cache: dict[int, bytes] = {}

    # ---------------------------------------------------------------- metadata

    def _attention_head_size(self) -> int:
        """The size of one attention head's keys: the GGUF's `key_length`, or the width over the head count."""
        architecture = self.metadata("general.architecture") or ""
        given = self.metadata(f"{architecture}.attention.key_length")
        if given and given.isdigit():
            return int(given)
        heads = llama_cpp.llama_model_n_head(self.ptr)
        return llama_cpp.llama_model_n_embd(self.ptr) // heads if heads > 0 else 0

    def metadata(self, key: str) -> str | None:
        size = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), None, 0)
        if size < 0:
            return None
        buffer = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buffer, size + 1)
        return buffer.value.decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- tokens

    def _tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, parse_special)
        if count < 0:
            capacity = -count
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, parse_special)
        return list(buffer[:count])

    def tokenize_plain(self, text: str) -> list[int]:
        """Tokens as the vocabulary frames an input on its own (BERT: [CLS] text [SEP]); special-token text is
        literal. What embedding models were trained on."""
        return self._tokenize(text, add_special=True, parse_special=False)

    def tokenize_literal(self, text: str) -> list[int]:
        return self._tokenize(text, add_special=False, parse_special=False)

    def tokenize_markup(self, text: str) -> list[int]:
        """Generated markup (a reasoning close marker): special-token text becomes its token, no BOS."""
        return self._tokenize(text, add_special=False, parse_special=True)

    def fill_in_the_middle_tokens(self) -> tuple[int, int, int] | None:
        """(prefix, suffix, middle) marker ids of code models trained for infill; None when the vocabulary has none."""
        ids = (llama_cpp.llama_vocab_fim_pre(self.vocab), llama_cpp.llama_vocab_fim_suf(self.vocab),
               llama_cpp.llama_vocab_fim_mid(self.vocab))
        return None if min(ids) < 0 else ids

    def tokenize(self, text: str) -> list[int]:
        """Prompt tokens: special-token text (`<start_of_turn>`) becomes special tokens, and a BOS is added
        when the model wants one and the rendered template did not already write it."""
        tokens = self._tokenize(text, add_special=False, parse_special=True)
        if self.add_bos and (not tokens or tokens[0] != self.bos_token_id):
            tokens.insert(0, self.bos_token_id)
        return tokens

    def piece(self, token: int) -> bytes:
        """The bytes a token contributes to completion text (control tokens render as nothing)."""
        cached = self._piece_cache.get(token)
        if cached is None:
            cached = self._render_piece(token, special=False)
            self._piece_cache[token] = cached
        return cached

    def special_tokens_among(self, texts: tuple[str, ...]) -> frozenset[int]:
        """The ids of those texts that this vocabulary holds as one special (normally invisible) token."""
        found = set()
        for text in texts:
            tokens = self.tokenize(text)
            if tokens and tokens[0] == self.bos_token_id and self.add_bos:
                tokens = tokens[1:]
            if len(tokens) == 1 and self.piece(tokens[0]) != self.token_text(tokens[0]):
                found.add(tokens[0])
        return frozenset(found)

    def token_text(self, token: int) -> bytes:
        """A token's own text, special tokens included (used to name tokens in logprobs and templates)."""
        return self._render_piece(token, special=True)

    def _render_piece(self, token: int, *, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if length < 0:
            buffer = ctypes.create_string_buffer(-length)
            length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -length, 0, special)
        return buffer.raw[:length]

    def closing_tokens(self) -> np.ndarray:
        """Tokens that only close JSON (`"`, `]`, `}` and merges of them, whitespace aside) and the end-of-generation
        tokens: what budget-aware closing favours. Found once per model, in a pass over the vocabulary (0.7 s for
        gemma's 262k tokens): `prepare_closing_tokens` starts it at load, off the scheduler thread."""
        with self._closing_lock:
            if self._closing_tokens is None:
                # _render_piece, not piece: filling the piece cache with the whole vocabulary would cost ~20 MB.
                closers = [token for token in range(self.n_vocab) if self.is_end_of_generation(token)
                           or only_closes(self._render_piece(token, special=False))]
                self._closing_tokens = np.array(closers, dtype=np.int64)
            return self._closing_tokens

    @functools.cached_property
    def utf8_table(self) -> Utf8Table:
        """Which tokens would break a constrained answer's UTF-8, at every point (see utf8_validity.py). Built the
        first time a pick does (rare: most runs never), in a pass over the vocabulary like `closing_tokens`."""
        return Utf8Table(self._render_piece(token, special=False) for token in range(self.n_vocab))

    def prepare_closing_tokens(self, cache_dir: Path | None = None) -> threading.Thread:
        """Find the closing tokens on a background thread; join it before freeing the model.

        `cache_dir`: this model file's cache directory, where they are kept from an earlier run (read in
        microseconds). The pass over the vocabulary is pure Python: on a small machine it takes a core from
        the first requests after a load (seen: +150 ms on the first answer after a restart), so it runs once per
        model file, at the lowest CPU priority."""

        saved = cache_dir / f"closing-tokens-{llama_cpp.__version__}.npy" if cache_dir else None

        def find() -> None:
            if saved is not None and saved.exists():
                try:
                    with self._closing_lock:
                        self._closing_tokens = np.load(saved, allow_pickle=False)
                    return
                except (OSError, ValueError) as exc:
                    logger.warning("Ignoring unreadable %s: %s", saved, exc)
            lower_this_threads_priority()
            tokens = self.closing_tokens()
            if saved is not None:
                try:
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    np.save(saved, tokens, allow_pickle=False)
                except OSError as exc:
                    logger.warning("Could not keep the closing tokens in %s: %s", saved, exc)

        thread = threading.Thread(target=find, name="closing-tokens", daemon=True)
        thread.start()
        return thread

    def end_tokens(self) -> list[int]:
        """The main end-of-generation tokens (end of sequence, end of turn)."""
        tokens = {llama_cpp.llama_vocab_eos(self.vocab), llama_cpp.llama_vocab_eot(self.vocab)}
        return sorted(token for token in tokens if token >= 0)

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


class LlamaContext:
    """One llama context (KV cache shared by `n_seq_max` sequences). Used only by the scheduler thread."""

    def __init__(self, model: LlamaModel, config: ContextConfig) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_seq_max = config.n_seq_max
        params.n_batch = config.n_batch
        params.n_ubatch = min(config.n_ubatch, config.n_batch)
        params.n_threads = config.n_threads
        params.n_threads_batch = config.n_threads_batch
        params.kv_unified = config.kv_unified
        params.swa_full = config.swa_full
        params.embeddings = config.embeddings
        params.pooling_type = config.pooling_type
        params.no_perf = True
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO if config.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ValueError("llama.cpp could not create a context (out of memory for this n_ctx?)")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ptr)
        self.n_batch = llama_cpp.llama_n_batch(self.ptr)
        self.memory = llama_cpp.llama_get_memory(self.ptr)
        self.n_vocab = model.n_vocab
        self.kv_unified = config.kv_unified

    def decode(self, batch: llama_cpp.llama_batch) -> int:
        return llama_cpp.llama_decode(self.ptr, batch)

    def logits(self, batch_index: int):
        """Raw logits row for a batch position that requested logits (a float* of n_vocab)."""
        return llama_cpp.llama_get_logits_ith(self.ptr, batch_index)

    def remove_tokens(self, seq_id: int, start: int) -> bool:
        """Drop a sequence's KV from position `start` on; False if the cache cannot cut there."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq_id, start, -1))

    def copy_prefix(self, source_seq: int, target_seq: int, length: int) -> None:
        """Make positions [0, length) of `source_seq` part of `target_seq` too (shared cells, no copy)."""
        llama_cpp.llama_memory_seq_cp(self.memory, source_seq, target_seq, 0, length)

    def clear_sequence(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def sequence_state(self, seq_id: int) -> bytearray:
        """A copy of one sequence's KV state (llama.cpp's own serialisation), for the prompt cache."""
        size = llama_cpp.llama_state_seq_get_size(self.ptr, seq_id)
        return _filled(size, lambda view: llama_cpp.llama_state_seq_get_data(self.ptr, view, size, seq_id))

    def load_sequence_state(self, seq_id: int, state: bytes | bytearray) -> bool:
        """Replace a sequence's KV with a saved state; False (and the sequence left empty) if llama.cpp refuses it."""
        self.clear_sequence(seq_id)
        if llama_cpp.llama_state_seq_set_data(self.ptr, _readable_pointer(state), len(state), seq_id) == 0:
            self.clear_sequence(seq_id)
            return False
        return True

    def checkpoint_state(self, seq_id: int) -> bytearray:
        """The part of a sequence's state that cannot be cut back (recurrent layers), as llama.cpp serialises it
        with its partial flag: with the attention KV cut to the same length, restoring it returns the sequence to
        exactly this point."""
        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        size = llama_cpp.llama_state_seq_get_size_ext(self.ptr, seq_id, flags)
        return _filled(size, lambda view: llama_cpp.llama_state_seq_get_data_ext(self.ptr, view, size, seq_id, flags))

    def restore_checkpoint(self, seq_id: int, state: bytes | bytearray, position: int) -> bool:
        """Return a sequence to a checkpoint taken when its next position was `position`: its recurrent state from
        the checkpoint, its attention KV cut there. False (the sequence left empty) if llama.cpp refuses."""
        buffer = _readable_pointer(state)
        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        if llama_cpp.llama_state_seq_set_data_ext(self.ptr, buffer, len(state), seq_id, flags) == 0 or \
                not self.remove_tokens(seq_id, position):
            self.clear_sequence(seq_id)
            return False
        return True

    def clear_memory(self) -> None:
        if self.memory:  # non-causal embedding models may have no KV memory at all
            llama_cpp.llama_memory_clear(self.memory, True)

    def pooling_type(self) -> int:
        return llama_cpp.llama_pooling_type(self.ptr)

    def pooled_embedding(self, seq_id: int, dimensions: int) -> list[float]:
        """The pooled vector of one sequence of the last decoded batch (embedding contexts only)."""
        pointer = llama_cpp.llama_get_embeddings_seq(self.ptr, seq_id)
        if not pointer:
            raise ValueError(f"llama.cpp returned no pooled embedding for sequence {seq_id}")
        return pointer[:dimensions]

    def first_position(self, seq_id: int) -> int:
        """Smallest position still cached for the sequence (-1 if empty); > 0 means older KV was evicted."""
        return llama_cpp.llama_memory_seq_pos_min(self.memory, seq_id)

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None


def _filled(size: int, write) -> bytearray:
    """A buffer of `size` bytes that llama.cpp serialises a state straight into (`write(view)` returns the bytes
    written). A ctypes array plus `string_at` took 15 ms for a 13 MB state (zeroing, then a second copy); this
    3.5 ms, and a sequence's state is copied on the request path (prompt snapshots, checkpoints)."""
    buffer = bytearray(size)
    view = (ctypes.c_uint8 * size).from_buffer(buffer)
    written = write(view)
    del view  # (a bytearray with a view on it cannot be resized)
    if written != size:
        del buffer[written:]
    return buffer


def _readable_pointer(data: bytes | bytearray):
    """A pointer llama.cpp reads `data` through, in place (no copy)."""
    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    return (ctypes.c_uint8 * len(data)).from_buffer(data)
