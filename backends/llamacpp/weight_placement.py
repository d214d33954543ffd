"""Where a GGUF model's weights go on the CPU: plain memory, or one of llama.cpp's repacked layouts.

llama.cpp's CPU backend registers "extra buffer types", and a model load offers each weight to them in order
before plain memory: `AMX` (Intel's Advanced Matrix Extensions: compiled in when the compiler targets an AMX Xeon,
registered when the kernel grants tile data) and `CPU_REPACK` (weights interleaved for the AVX2 / AVX-512 / NEON
kernels; 1.2-1.3x the decode speed of plain memory, measured on a Xeon with AMX). The AMX kernels of the llama.cpp
we pin kill the process on the first prompt it decodes (a general protection fault at `ldtilecfg`, or an invalid
opcode: llama.cpp PR #26954; Ollama #17249), on the Sapphire / Emerald / Granite Rapids VMs clouds rent.

`--repack` chooses, per model:
- `auto` (default): every extra buffer type this machine runs safely: all llama.cpp registered, AMX excepted;
- `on`: all of them, AMX included (for a llama.cpp build whose AMX path is fixed);
- `off`: none (llama-server's `--no-repack`): plain memory, the slowest and most conservative.

llama.cpp has no parameter for a subset (`use_extra_bufts` is all or nothing, and a tensor override to the CPU
buffer type brings the whole list back). But the list is data it reads at each load: the CPU backend hands out a
NULL-terminated array (`ggml_backend_dev_get_extra_bufts`) that the loader walks once per model. So a load that
must skip a type writes the array without it, loads, and writes it back, under one lock. Where that array cannot be
reached (another llama.cpp build) and the CPU has AMX, `auto` falls back to `off`: never a crash.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import llama_cpp

logger = logging.getLogger(__name__)

RepackMode = Literal["auto", "on", "off"]

# Extra buffer types whose kernels crash this llama.cpp, and why (shown in the log and on the model card).
UNSAFE_BUFFER_TYPES = {
    "AMX": "llama.cpp's AMX kernels kill the process on the first prompt decoded (general protection fault at "
           "ldtilecfg, or invalid opcode; llama.cpp PR #26954): --repack on only with a build where that is fixed",
}
_CPU_DEVICE = 0  # enum ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_CPU
# llama.cpp's load report, one line per weight buffer ("load_tensors:   CPU_REPACK model buffer size =  60.19 MiB"):
# its C API has no call that says where a model's weights went (the memory breakdown is C++ only).
_WEIGHT_BUFFER_LINE = re.compile(r"(\S+) model buffer size = +([0-9.]+) MiB")
_GET_EXTRA_BUFTS = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


@dataclass(frozen=True)
class WeightPlacement:
    """What one model load was offered, and where its weights went."""

    repack: RepackMode
    offered: tuple[str, ...]  # extra buffer types the load could use, in llama.cpp's order of preference
    skipped: dict[str, str] = field(default_factory=dict)  # registered types not offered -> why
    buffers: dict[str, int] = field(default_factory=dict)  # buffer type -> bytes of weights it holds

    def with_buffers(self, buffers: dict[str, int]) -> WeightPlacement:
        return WeightPlacement(self.repack, self.offered, self.skipped, buffers)

    def describe(self) -> dict:
        """For the model card."""
        return {"repack": self.repack, "extra_buffer_types": list(self.offered), "skipped": self.skipped,
                "buffers": self.buffers}

    def summary(self) -> str:
        """One log line's worth."""
        held = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in self.buffers.items()) or "unknown"
        offered = ", ".join(self.offered) or "none"
        skipped = "".join(f"; {name} skipped: {why}" for name, why in self.skipped.items())
        return f"repack={self.repack} (extra buffer types offered: {offered}{skipped}); weights in {held}"


class ExtraBufferTypes:
    """The CPU backend's extra buffer type list, as llama.cpp's model loader reads it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one load at a time sees an edited list
        self._array = _extra_bufts_array()
        self._original: list[int] = []
        if self._array:
            while self._array[len(self._original)]:
                self._original.append(self._array[len(self._original)])
        self.names = tuple(_buffer_type_name(pointer) for pointer in self._original)
        self.reachable = bool(self._array)

    @contextmanager
    def offering(self, names: tuple[str, ...]) -> Iterator[None]:
        """Let loads inside the block see only `names` (a subset, in the original order)."""
        with self._lock:
            if names == self.names:
                yield
                return
            kept = [pointer for pointer, name in zip(self._original, self.names) if name in names]
            for index, pointer in enumerate([*kept, None]):  # shorter than the original: NULL ends it early
                self._array[index] = pointer
            try:
                yield
            finally:
                for index, pointer in enumerate(self._original):
                    self._array[index] = pointer


def _extra_bufts_array():
    """The NULL-terminated array llama.cpp's loader walks, or None where this build does not expose it."""
    lib = llama_cpp.llama_cpp._lib  # dlsym on libllama's handle also finds the ggml symbols it links
    try:
        lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    except AttributeError:
        return None
    device = lib.ggml_backend_dev_by_type(_CPU_DEVICE)
    registry = lib.ggml_backend_dev_backend_reg(device) if device else None
    address = lib.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_dev_get_extra_bufts") if registry else None
    if not address:
        return None
    array = _GET_EXTRA_BUFTS(address)(device)
    return array if array else None


def _buffer_type_name(pointer: int) -> str:
    lib = llama_cpp.llama_cpp._lib
    lib.ggml_backend_buft_name.restype = ctypes.c_char_p
    lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    return lib.ggml_backend_buft_name(pointer).decode()


def weight_buffers(load_report: list[str]) -> dict[str, int]:
    """Bytes of weights per buffer type, from the lines a model load logged."""
    buffers: dict[str, int] = {}
    for match in filter(None, map(_WEIGHT_BUFFER_LINE.search, load_report)):
        buffers[match[1]] = buffers.get(match[1], 0) + round(float(match[2]) * 2**20)
    return buffers


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU advertises AMX (Linux); the fallback test where llama.cpp's own list cannot be read."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_tile" in flags.split()


def system_features() -> str:
    """The CPU features this llama.cpp build uses, from its system info ("AVX2 AVX512 ... REPACK")."""
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return " ".join(name.split(":")[-1].strip() for part in info.split("|") if "=" in part  # "CPU : SSE3 = 1"
                    for name, value in [part.rsplit("=", 1)] if value.strip() == "1")


_extra_types: ExtraBufferTypes | None = None
_extra_types_lock = threading.Lock()


def extra_buffer_types() -> ExtraBufferTypes:
    global _extra_types
    with _extra_types_lock:
        if _extra_types is None:
            _extra_types = ExtraBufferTypes()
            logger.info("llama.cpp CPU backend: %s; extra buffer types: %s", system_features(),
                        ", ".join(_extra_types.names) or "none")
        return _extra_types


def plan(repack: RepackMode, extra: ExtraBufferTypes, has_amx: bool) -> WeightPlacement:
    """What a load with this `--repack` choice is offered on this machine."""
    if repack == "off":
        return WeightPlacement("off", ())
    if repack == "on":
        return WeightPlacement("on", extra.names)
    if not extra.reachable:  # the list cannot be edited: on an AMX CPU, take no risk
        if has_amx:
            return WeightPlacement("auto", (), {"*": "this llama.cpp build's buffer type list cannot be read and "
                                                     "the CPU has AMX: weights stay in plain memory"})
        return WeightPlacement("auto", extra.names)
    skipped = {name: why for name, why in UNSAFE_BUFFER_TYPES.items() if name in extra.names}
    return WeightPlacement("auto", tuple(name for name in extra.names if name not in skipped), skipped)


@contextmanager
def placed(repack: RepackMode, params: llama_cpp.llama_model_params) -> Iterator[WeightPlacement]:
    """Set `params` for this choice; while the block loads the model, llama.cpp's list holds what was planned."""
    extra = extra_buffer_types()
    placement = plan(repack, extra, cpu_has_amx())
    params.use_extra_bufts = bool(placement.offered)
    if not placement.offered or not extra.reachable:  # llama.cpp reads no list, or the whole one, unedited
        yield placement
        return
    with extra.offering(placement.offered):
        yield placement
