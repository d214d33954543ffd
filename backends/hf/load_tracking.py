"""Weight-by-weight load progress for transformers checkpoints.

transformers reads a checkpoint's weights in one loop wrapped in its own `tqdm` (core_model_loading, "Loading
weights"); it offers no callback. We wrap that module's `tqdm` once: inside a load that the registry tracks (a
LoadProgress in the context, backends/load_progress.py) each weight loaded moves the fraction from FIRST to LAST;
everywhere else (other threads, other loads) it is transformers' own tqdm, unchanged. If a transformers release
renames the hook, loads still work and report by stage only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from backends.load_progress import LoadProgress, current_load

FIRST, LAST = 0.1, 0.85  # the share of a load spent reading weights (tokenizer before, device placement after)


class _Reporting:
    """The tqdm object transformers made, iterated through so each step reports."""

    def __init__(self, inner: Any, total: int, progress: LoadProgress) -> None:
        self._inner, self._total, self._progress = inner, max(1, total), progress

    def __iter__(self) -> Iterator[Any]:
        for done, item in enumerate(self._inner, start=1):
            yield item
            self._progress.report(FIRST + (LAST - FIRST) * done / self._total, "weights")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install() -> None:
    """Wrap transformers' weight-loading tqdm (idempotent)."""
    try:
        from transformers import core_model_loading
    except ImportError:
        return
    original = getattr(core_model_loading, "tqdm", None)
    if original is None or getattr(original, "_reports_load_progress", False):
        return

    def tqdm(iterable: Iterable | None = None, *args: Any, **kwargs: Any) -> Any:
        inner = original(iterable, *args, **kwargs)
        progress = current_load()
        if progress is None or iterable is None or not hasattr(iterable, "__len__"):
            return inner
        return _Reporting(inner, len(iterable), progress)

    tqdm._reports_load_progress = True  # type: ignore[attr-defined]
    core_model_loading.tqdm = tqdm
