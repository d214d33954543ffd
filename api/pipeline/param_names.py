"""Errors from the shared chat path name the field a client of another API (Responses, Messages) sent, not the
field's chat twin: each API lists how its names map."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from errors import InvalidRequest

Renames = list[tuple[re.Pattern, str]]


@contextmanager
def spelled_as_sent(renames: Renames) -> Iterator[None]:
    try:
        yield
    except InvalidRequest as exc:
        for pattern, replacement in renames:
            if exc.param and pattern.search(exc.param):
                exc.param = pattern.sub(replacement, exc.param)
                break
        raise
