"""LoRA adapters on the llama.cpp engine.

llama.cpp applies adapters per context (`llama_set_adapters_lora`), not per sequence, so one `llama_decode`
runs with one adapter set. The scheduler therefore takes turns: each step decodes the sequences of one adapter
set (the base's own sequences are the set ""), round robin over the sets with work, and switches the context's
adapters only when the set changes. A sequence's KV is computed with its set's adapters, so prefixes are
reused, and prompt states cached on disk, only within the same set (`AdapterSet.key`).

Adapter files are loaded once per model however many sets use them (`LoraLibrary`, counted references).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from backends.base import AdapterSet
from backends.llamacpp.log_routing import lines_logged_by_this_thread, reason_from
from backends.llamacpp.model import LlamaContext, LlamaModel
from backends.llamacpp.prompt_cache import PromptCache

BASE = ""  # the adapter key of sequences decoded without adapters
TURN_SECONDS = 0.08  # how long one adapter set decodes before the next set with work takes over


@dataclass(frozen=True, eq=False)
class LlamaLoraSet(AdapterSet):
    """Adapters as loaded into one llama.cpp model: their handles, scales, and the set's own prompt cache."""

    files: tuple[Path, ...] = ()
    scales: tuple[float, ...] = ()
    handles: tuple[int, ...] = ()  # llama_adapter_lora pointers (addresses)
    prompt_cache: PromptCache | None = field(default=None, repr=False)


def key_of(adapters: LlamaLoraSet | None) -> str:
    """The adapter key sequences computed with `adapters` carry (BASE: none)."""
    return adapters.key if adapters is not None else BASE


def prompt_cache_of(adapters: LlamaLoraSet | None, base_cache: PromptCache | None) -> PromptCache | None:
    """Where states computed with `adapters` are kept on disk (the base's own cache for none)."""
    return adapters.prompt_cache if adapters is not None else base_cache


class LoraLibrary:
    """The adapter files loaded into one model, each once, freed when the last set using it is detached."""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self._loaded: dict[Path, list] = {}  # resolved path -> [handle, references]
        self._lock = threading.Lock()

    def acquire(self, path: Path) -> int:
        with self._lock:
            key = path.resolve()
            if key not in self._loaded:
                self._loaded[key] = [self._load(path), 0]
            self._loaded[key][1] += 1
            return self._loaded[key][0]

    def _load(self, path: Path) -> int:
        if not path.is_file():
            raise ValueError(f"the LoRA adapter {path} does not exist (llama.cpp adapters are GGUF files)")
        with lines_logged_by_this_thread(logging.ERROR) as errors:
            handle = llama_cpp.llama_adapter_lora_init(self.model.ptr, str(path).encode())
        if not handle:  # llama.cpp logged why (another architecture, tensor shapes not this model's...)
            raise ValueError(f"llama.cpp could not load {path.name} as a LoRA adapter of this model: "
                             f"{reason_from(errors)} (a LoRA GGUF converted for this base model is needed)")
        address = ctypes.cast(handle, ctypes.c_void_p).value
        if llama_cpp.llama_adapter_get_alora_n_invocation_tokens(handle):
            llama_cpp.llama_adapter_lora_free(handle)
            raise ValueError(f"{path.name} is an activated LoRA (it applies from invocation tokens on), which "
                             "this server does not support; it would be applied to the whole sequence")
        return address

    def release(self, path: Path) -> None:
        with self._lock:
            key = path.resolve()
            entry = self._loaded.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del self._loaded[key]
                llama_cpp.llama_adapter_lora_free(_pointer(entry[0]))

    def free_all(self) -> None:
        with self._lock:
            for handle, _ in self._loaded.values():
                llama_cpp.llama_adapter_lora_free(_pointer(handle))
            self._loaded.clear()


def _pointer(address: int):
    return ctypes.cast(ctypes.c_void_p(address), llama_cpp.llama_adapter_lora_p_ctypes)


def apply_adapters(context: LlamaContext, adapters: LlamaLoraSet | None) -> None:
    """Make the context decode with exactly `adapters` (none: the base weights alone)."""
    if adapters is None or not adapters.handles:
        status = llama_cpp.llama_set_adapters_lora(context.ptr, None, 0, None)
    else:
        count = len(adapters.handles)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * count)(*(_pointer(h) for h in adapters.handles))
        scales = (ctypes.c_float * count)(*adapters.scales)
        status = llama_cpp.llama_set_adapters_lora(context.ptr, handles, count, scales)
    if status != 0:
        raise RuntimeError(f"llama_set_adapters_lora returned {status}")


class AdapterTurns:
    """Which adapter set the next step decodes: the sets with active sequences take turns, round robin, so the
    base's streams and each adapter's keep moving. A turn lasts `turn_seconds` of steps: switching the context's
    adapters makes llama.cpp rebuild its compute graph reservation (measured on SmolLM2, 2 CPU threads: ~5 ms on a
    ~22 ms step), so switching every step would cost a fifth of the throughput; a turn of a few steps amortises it,
    at the price of the waiting set's streams pausing for one turn. A long prefill step ends its turn by itself."""

    def __init__(self, apply: Callable[[LlamaLoraSet | None], None], turn_seconds: float = TURN_SECONDS,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.apply = apply  # puts a set on the context (apply_adapters), None = no adapters
        self.turn_seconds = turn_seconds
        self.clock = clock
        self.applied: LlamaLoraSet | None = None
        self._current = BASE
        self._turn_began = 0.0

    def choose(self, sets: dict[str, LlamaLoraSet | None]) -> str:
        """The key to decode now among `sets` (key -> set, the keys of the active sequences)."""
        now = self.clock()
        if self._current in sets and (len(sets) == 1 or now - self._turn_began < self.turn_seconds):
            key = self._current
        else:
            later = sorted(key for key in sets if key > self._current)
            key = later[0] if later else min(sets)
            self._current, self._turn_began = key, now
        if key != key_of(self.applied):
            self.apply(sets[key])
            self.applied = sets[key]
        return key

    def forget(self, adapters: LlamaLoraSet) -> None:
        """Before `adapters` are freed: take them off the context if they are on it."""
        if self.applied is not None and self.applied.key == adapters.key:
            self.apply(None)
            self.applied = None
