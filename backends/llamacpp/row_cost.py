"""What one more row costs in a decode step on this machine, learned from the scheduler's own steps.

A busy step's guessed rows pay only where enough of them are accepted: a row of B sequences' step costs `c` of a
token, so a sequence's guesses must hold more often than `c`. `c` depends on the CPU and the batch: 0.6 of a token at
8 gemma-3 sequences on a Xeon with AMX, 0.85-0.9 on an AMD EPYC, where 8 sequences already keep both cores busy. A
fixed threshold drafted at a loss on one and left speed unused on the other, so the scheduler times its decode-only
steps and fits step seconds = fixed + per_row * rows over the recent ones.

The line is not the whole story: on some CPUs a step of 4k + 1 rows costs more than one of 4k + 4, likely (not traced
kernel by kernel) because ggml's CPU matrix products take rows in groups of four (its repacked layouts quantize
activations four rows at a time, llamafile's kernels work on 4-row tiles) and put the rows left over through a
one-row kernel each. On an AMD EPYC with AVX-512 (gemma-3, one sequence, in one-row steps' time):
4 rows 2.27, 5 rows 3.36, 7 rows 4.05, 8 rows 3.47, 16 rows 5.20, 17 rows 6.36; 16 sequences a step 72.0 ms against
84.1 for 15. So each row count's own time is kept too (`step_seconds`), for rounding a step's guesses to a cheaper
count (speculative_steps.py).
"""

from __future__ import annotations

from collections import deque

BY_ROWS_WEIGHT = 0.25  # a new step's share in its row count's average
TILE = 4  # rows ggml's CPU matrix products take together


class RowCost:
    """Least squares over the last `window` decode-only steps (rows, seconds); None until the steps seen differ
    in their row counts enough to tell a slope."""

    def __init__(self, window: int = 128, min_steps: int = 16, refit_every: int = 8) -> None:
        self.steps: deque[tuple[int, float]] = deque(maxlen=window)
        self.min_steps = min_steps
        self.refit_every = refit_every  # (a fit reads the whole window: not every step)
        self._fitted: tuple[float, float] | None = None
        self._new = 0
        self._by_rows: dict[int, float] = {}  # row count -> its steps' seconds, a moving average

    def observe(self, rows: int, seconds: float) -> None:
        self.steps.append((rows, seconds))
        self._new += 1
        before = self._by_rows.get(rows)
        self._by_rows[rows] = seconds if before is None else before + BY_ROWS_WEIGHT * (seconds - before)

    def step_seconds(self, rows: int) -> float | None:
        """What a decode-only step of exactly `rows` rows took lately; None for a count not seen yet."""
        return self._by_rows.get(rows)

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per row), or None without enough different row counts behind it."""
        if self._new >= self.refit_every:
            self._fitted, self._new = self._least_squares(), 0
        return self._fitted

    def _least_squares(self) -> tuple[float, float] | None:
        n = len(self.steps)
        if n < self.min_steps:
            return None
        mean_rows = sum(rows for rows, _ in self.steps) / n
        mean_seconds = sum(seconds for _, seconds in self.steps) / n
        spread = sum((rows - mean_rows) ** 2 for rows, _ in self.steps)
        if spread < n:  # row counts within about one of each other: no slope to read
            return None
        per_row = sum((rows - mean_rows) * (seconds - mean_seconds) for rows, seconds in self.steps) / spread
        fixed = mean_seconds - per_row * mean_rows
        if per_row <= 0:
            return None
        return max(fixed, 0.0), per_row

    def of_a_token(self, sequences: int) -> float | None:
        """A row's cost as a share of what each token of a `sequences`-row step costs (1: a row costs a whole token,
        so guesses can only lose); None while unknown."""
        fitted = self.fit()
        if fitted is None or sequences < 1:
            return None
        fixed, per_row = fitted
        return per_row * sequences / (fixed + per_row * sequences)
