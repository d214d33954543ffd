"""llama.cpp's own log lines go through Python logging (logger `llama_cpp`) instead of straight to stderr.

llama.cpp calls back with fragments (a line may arrive in pieces, continuations marked GGML_LOG_LEVEL_CONT), so
fragments are joined into lines first. Its INFO level is the model loader's dump (every GGUF key, tensor type
counts, buffer sizes: dozens of lines per load), so it is logged at DEBUG: seen with `--log-level debug`, never
at `info`. Warnings and errors keep their level.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

logger = logging.getLogger("llama_cpp")

# ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous message).
_CONTINUE = 5
_PYTHON_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


class _LineJoiner:
    """Collects fragments until a newline, then logs the line at the level its first fragment had."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the scheduler thread and a loading thread may both log
        self._pending = ""
        self._level = logging.DEBUG
        self._listeners: dict[int, tuple[int, list[str]]] = {}  # thread id -> (lowest level, lines it logged)

    def feed(self, ggml_level: int, text: str) -> None:
        with self._lock:
            if ggml_level != _CONTINUE:
                if self._pending:  # a new message while one is unfinished: flush that one first
                    self._emit(self._pending)
                    self._pending = ""
                self._level = _PYTHON_LEVELS.get(ggml_level, logging.DEBUG)
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._emit(line)

    def _emit(self, line: str) -> None:
        if line.strip():
            logger.log(self._level, "%s", line.rstrip())
            level, lines = self._listeners.get(threading.get_ident(), (0, None))
            if lines is not None and self._level >= level:
                lines.append(line.rstrip())

    @contextmanager
    def listen(self, level: int) -> Iterator[list[str]]:
        lines: list[str] = []
        with self._lock:
            self._listeners[threading.get_ident()] = (level, lines)
        try:
            yield lines
        finally:
            with self._lock:
                self._listeners.pop(threading.get_ident(), None)


_joiner = _LineJoiner()


@llama_cpp.llama_log_callback
def _forward_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    _joiner.feed(level, text.decode("utf-8", errors="replace"))


def route_llama_logs_to_python() -> None:
    """Install the callback; call after importing llama_cpp's high-level modules, which install their own."""
    llama_cpp.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))


def lines_logged_by_this_thread(level: int = logging.NOTSET) -> contextlib.AbstractContextManager[list[str]]:
    """The llama.cpp log lines (at `level` or above) the calling thread causes inside the block, in order: a model
    load's own report, or why llama.cpp refused a file."""
    return _joiner.listen(level)


def reason_from(errors: list[str]) -> str:
    """llama.cpp's last error line, without its function-name prefix ("llama_adapter_lora_init: ...")."""
    return errors[-1].split(": ", 1)[-1] if errors else "llama.cpp logged no reason"


def route_mtmd_logs_to_python() -> None:
    """The same for llama.cpp's multimodal library (imported only once a model has a projector)."""
    import llama_cpp.mtmd_cpp as mtmd

    mtmd.mtmd_helper_log_set(_forward_llama_log, ctypes.c_void_p(0))
