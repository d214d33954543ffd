"""A worker's stdout and stderr, line by line, into the server's log under the model's name.

The worker's Python logging writes `LEVEL logger: message` lines (backends/worker/child.py), logged here again at
their level under their logger; anything else (a native library printing straight to the file descriptors: a
failed GGML_ASSERT, a C++ `terminate called...`) is logged as a warning. The last lines are kept, and the last
line that reads like a native failure: they say why a worker died (with a backtrace, which ggml prints after its
assert when GGML_NO_BACKTRACE is unset, the assert itself is rarely among the very last lines).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from typing import BinaryIO

_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)")
_FATAL = re.compile(r"GGML_ASSERT|GGML_ABORT|terminate called|Segmentation fault|Aborted|fatal error", re.IGNORECASE)
KEPT_LINES = 20


class LogRelay:
    def __init__(self, stream: BinaryIO, model_id: str) -> None:
        self.model_id = model_id
        self.last_lines: deque[str] = deque(maxlen=KEPT_LINES)
        self.last_fatal: str | None = None
        self._stream = stream
        self._thread = threading.Thread(target=self._relay, name=f"worker-log-{model_id}", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line:
                continue
            self.last_lines.append(line)
            if _FATAL.search(line):
                self.last_fatal = line
            if (match := _LINE.fullmatch(line)) is not None:
                level, name, message = match.groups()
                logging.getLogger(name).log(logging.getLevelName(level), "[%s] %s", self.model_id, message)
            else:
                logging.getLogger("backends.worker").warning("[%s] %s", self.model_id, line)
        self._stream.close()

    def join(self, timeout: float) -> None:
        """Wait for the last lines of a worker that exited (its pipe closes once they are read)."""
        self._thread.join(timeout)

    def tail(self, count: int = 5) -> list[str]:
        """The last `count` lines, after the last native failure's line when that is further back."""
        lines = list(self.last_lines)[-count:]
        if self.last_fatal is not None and self.last_fatal not in lines:
            lines = [self.last_fatal, "...", *lines[1:]]
        return lines
