"""Images and audio on the llama.cpp engine, through llama.cpp's mtmd library and the model's projector (mmproj).

A prompt with media markers becomes one token list in which each image (or audio clip) stands as a run of
*placeholder tokens*: negative ids derived from the media's digest, one per position it fills. The scheduler
and both prompt caches compare token lists only, so the same image in the same place of a prompt is a shared
prefix like any text (its cached KV is reused, in memory and on disk) and a different image never is. A
placeholder never reaches `llama_decode` as a token: the scheduler decodes the media's embeddings in its place.

Encoding (the vision tower, the expensive part) runs on the request's worker thread before the sequence starts,
and only for media its cached prefix does not already cover; the scheduler's step then decodes the embeddings
like a prompt chunk of the same size. The mtmd context is not thread-safe: one encode at a time (`_lock`).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from backends.llamacpp.log_routing import lines_logged_by_this_thread, reason_from, route_mtmd_logs_to_python
from backends.llamacpp.model import LlamaContext, LlamaModel
from backends.media_inputs import LoadedMedia
from chat.media import MEDIA_MARKER
from errors import InvalidRequest

logger = logging.getLogger(__name__)


def placeholder_token(digest: bytes) -> int:
    """The (negative) id standing for every position of one media item."""
    return -1 - (int.from_bytes(digest[:4], "little") & 0x3FFFFFFF)


@dataclass(eq=False)
class MediaSpan:
    """One media item of a prompt: where its placeholders start, how many, and its chunk (owned) and embeddings."""

    start: int
    length: int
    chunk: int  # an owned mtmd_input_chunk (address), freed with the span
    kind: str
    embeddings: np.ndarray | None = field(default=None, repr=False)  # (length, n_embd) float32, once encoded
    positions: int = -1  # positions it advances the sequence by: its length, except with M-RoPE (set in __post_init__)

    def __post_init__(self) -> None:
        if self.positions < 0:
            self.positions = self.length

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class MediaPrompt:
    tokens: list[int]
    spans: list[MediaSpan]


def find_projector(model_path: Path) -> Path | None:
    """By convention, a projector beside the model: mmproj-<stem>*.gguf, <stem>*mmproj*.gguf, or the only
    mmproj*.gguf of a folder that holds this one model."""
    folder, stem = model_path.parent, model_path.stem
    named = sorted(folder.glob(f"mmproj-{stem}*.gguf")) + sorted(folder.glob(f"{stem}*mmproj*.gguf"))
    if named:
        return named[0]
    models = [p for p in folder.glob("*.gguf") if "mmproj" not in p.name.lower()]
    lone = sorted(folder.glob("mmproj*.gguf"))
    return lone[0] if len(models) == 1 and len(lone) == 1 else None


class Projector:
    """A model's mmproj, loaded for that model."""

    def __init__(self, path: Path, model: LlamaModel, n_threads: int) -> None:
        route_mtmd_logs_to_python()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        with lines_logged_by_this_thread(logging.ERROR) as errors:
            self.ptr = mtmd.mtmd_init_from_file(str(path).encode(), model.ptr, params)
        if not self.ptr:
            raise ValueError(f"llama.cpp could not load the projector {path.name} for this model: {reason_from(errors)}")
        self.path = path
        self.model = model
        self.vision = bool(mtmd.mtmd_support_vision(self.ptr))
        self.audio = bool(mtmd.mtmd_support_audio(self.ptr))
        # (M-RoPE projectors, the Qwen2-VL family's, lay an image on a grid of positions: it advances the sequence
        # by fewer positions than it has tokens, MediaSpan.positions)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(model.ptr)  # the width of media embeddings
        self._lock = threading.Lock()

    def tokenize(self, prompt: str, media: list[LoadedMedia]) -> MediaPrompt:
        """The prompt's tokens with placeholders, and a span per media item (blocking: a worker thread)."""
        if prompt.count(MEDIA_MARKER) != len(media):
            raise InvalidRequest("The prompt's media markers do not match its media (is '<__media__>' in a text part?).",
                                 param="messages")
        bitmaps: list[int] = []
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            for item in media:  # (one by one: those made before a refused file are freed below)
                bitmaps.append(self._bitmap(item))
            text = prompt.encode()
            part = mtmd.mtmd_input_text(text=text, text_len=len(text), add_special=False, parse_special=True)
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            with self._lock:
                status = mtmd.mtmd_tokenize(self.ptr, chunks, ctypes.byref(part), array, len(bitmaps))
            if status != 0:
                raise InvalidRequest(f"llama.cpp could not read the media of this prompt (mtmd_tokenize: {status}).",
                                     param="messages")
            return self._prompt(chunks, media)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _bitmap(self, item: LoadedMedia) -> int:
        if item.kind == "audio":
            buffer = (ctypes.c_ubyte * len(item.data)).from_buffer_copy(item.data)
            bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.ptr, buffer, len(item.data), False)  # decoded now
        else:
            pixels = (ctypes.c_uint8 * len(item.pixels)).from_buffer_copy(item.pixels)
            bitmap = mtmd.mtmd_bitmap_init(item.width, item.height, pixels)
        if not bitmap:
            raise InvalidRequest(f"llama.cpp could not read this {item.kind} (WAV, MP3 or FLAC for audio).",
                                 param=item.param)
        mtmd.mtmd_bitmap_set_id(bitmap, item.digest.hex().encode())
        return bitmap

    def _prompt(self, chunks, media: list[LoadedMedia]) -> MediaPrompt:
        tokens: list[int] = []
        spans: list[MediaSpan] = []
        items = iter(media)
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                tokens.extend(ids[:count.value])
                continue
            item = next(items)
            length = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            owned = mtmd.mtmd_input_chunk_copy(chunk)
            span = MediaSpan(len(tokens), length, owned, item.kind,
                             positions=mtmd.mtmd_input_chunk_get_n_pos(chunk))
            weakref.finalize(span, mtmd.mtmd_input_chunk_free, owned)
            spans.append(span)
            tokens.extend([placeholder_token(item.digest)] * length)
        model = self.model
        if model.add_bos and (not tokens or tokens[0] != model.bos_token_id):
            tokens.insert(0, model.bos_token_id)
            for span in spans:
                span.start += 1
        if spans and spans[-1].end == len(tokens):
            raise InvalidRequest("A prompt cannot end with an image or audio clip: put text after it.", param="messages")
        return MediaPrompt(tokens, spans)

    def encode(self, span: MediaSpan) -> None:
        """Run the media through the projector (blocking), keeping its embeddings on the span."""
        if span.embeddings is not None:
            return
        with self._lock:
            status = mtmd.mtmd_encode_chunk(self.ptr, span.chunk)
            if status != 0:
                raise RuntimeError(f"mtmd_encode_chunk returned {status}")
            output = mtmd.mtmd_get_output_embd(self.ptr)
            span.embeddings = np.ctypeslib.as_array(output, shape=(span.length * self.n_embd,)).copy()

    def decode(self, context: LlamaContext, span: MediaSpan, seq_id: int, position: int, n_batch: int) -> None:
        """Decode the span's embeddings into `seq_id` from `position` on (the scheduler's thread); mtmd lays out
        the positions of each embedding (a grid of them with M-RoPE)."""
        self.encode(span)  # normally done before the sequence started
        embeddings = span.embeddings.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        new_position = llama_cpp.llama_pos(position)
        status = mtmd.mtmd_helper_decode_image_chunk(self.ptr, context.ptr, span.chunk, embeddings, position,
                                                     seq_id, n_batch, ctypes.byref(new_position),
                                                     mtmd.mtmd_helper_post_decode_callback(), None)  # NULL: none
        if status != 0:
            raise RuntimeError(f"decoding the {span.kind}'s embeddings failed ({status})")

    def free(self) -> None:
        if self.ptr:
            mtmd.mtmd_free(self.ptr)
            self.ptr = None
