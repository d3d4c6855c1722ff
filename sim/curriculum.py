"""Where the next online episode puts the task's object: more often where the policy fails.

A layout curriculum over the work-area grid (:mod:`limbic.sim.tasks`). Each online episode
reports its object's cell and whether the policy solved it on its own (a success with no human
step); the curriculum keeps the last ``window`` results of every cell. Before the next
episode, with probability ``focus`` it picks a cell with probability proportional to that
cell's failure rate (``(failures + 1) / (episodes + 2)``: unseen cells count as 50 %);
otherwise it leaves the layout to the task (uniform over the split's area). Held-out cells are
never picked, so the evaluation split stays unseen.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from limbic.sim.tasks import GRID, HELDOUT_CELLS

Cell = tuple[int, int]


class LayoutCurriculum:
    """Failure-weighted choice of the next episode's object cell among the training cells."""

    def __init__(self, focus: float, window: int, rng: np.random.Generator):
        if not 0.0 <= focus <= 1.0:
            raise ValueError(f"layout focus must be in [0, 1] (a share of episodes), got {focus}")
        if window < 1:
            raise ValueError(f"layout window must be >= 1 episode per cell, got {window}")
        self.focus = focus
        self.rng = rng
        self.cells: tuple[Cell, ...] = tuple(
            (i, j) for i in range(GRID) for j in range(GRID) if (i, j) not in HELDOUT_CELLS
        )
        self._results: dict[Cell, deque[bool]] = {c: deque(maxlen=window) for c in self.cells}

    def record(self, cell: Cell | None, solved: bool) -> None:
        """One finished episode: its object's cell (None: not known, ignored) and whether the
        policy solved it alone."""
        if cell is None:
            return
        cell = (int(cell[0]), int(cell[1]))
        if cell not in self._results:
            raise ValueError(f"cell {list(cell)} is not a training cell of the work area")
        self._results[cell].append(bool(solved))

    def failure_rate(self, cell: Cell) -> float:
        """The cell's failure rate over its last ``window`` episodes, with one success and one
        failure added (0.5 before any)."""
        results = self._results[cell]
        return (len(results) - sum(results) + 1) / (len(results) + 2)

    def weights(self) -> np.ndarray:
        """The probability of each of :attr:`cells` when the curriculum picks."""
        rates = np.array([self.failure_rate(c) for c in self.cells])
        return rates / rates.sum()

    def pick(self) -> Cell | None:
        """The next episode's object cell, or None to leave the layout to the task."""
        if self.focus <= 0.0 or self.rng.random() >= self.focus:
            return None
        return self.cells[int(self.rng.choice(len(self.cells), p=self.weights()))]
