"""Background threads that must not slow the engine's own (decoding) threads down."""

from __future__ import annotations

import os
import threading


def lower_this_threads_priority() -> None:
    """Nice the calling thread (Linux schedules threads one by one), so decoding threads come first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: it only runs a little slower for others
        pass
