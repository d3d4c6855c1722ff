"""The layout curriculum: it picks training cells in proportion to the policy's failures there."""

from __future__ import annotations

import numpy as np
import pytest

from limbic.sim.curriculum import LayoutCurriculum
from limbic.sim.tasks import HELDOUT_CELLS


def curriculum(focus: float = 1.0, window: int = 10, seed: int = 0) -> LayoutCurriculum:
    return LayoutCurriculum(focus, window, np.random.default_rng(seed))


def test_it_picks_only_training_cells_and_uniformly_before_any_result():
    c = curriculum()
    assert len(c.cells) == 12 and not set(c.cells) & HELDOUT_CELLS
    assert np.allclose(c.weights(), 1 / 12)
    picks = [c.pick() for _ in range(2400)]
    assert set(picks) == set(c.cells)


def test_a_failing_cell_is_picked_in_proportion_to_its_failure_rate():
    c = curriculum()
    for cell in c.cells:
        for _ in range(10):
            c.record(cell, solved=cell != (0, 0))
    # (0, 0): 10 failures of 10 -> 11/12; every other cell 0 of 10 -> 1/12
    assert c.failure_rate((0, 0)) == pytest.approx(11 / 12)
    assert c.failure_rate((3, 3)) == pytest.approx(1 / 12)
    expected = 11 / (11 + 11 * 1)
    assert c.weights()[c.cells.index((0, 0))] == pytest.approx(expected)
    picks = [c.pick() for _ in range(4000)]
    share = sum(p == (0, 0) for p in picks) / len(picks)
    assert share == pytest.approx(expected, abs=0.03)


def test_only_the_last_window_of_a_cell_counts():
    c = curriculum(window=4)
    for _ in range(4):
        c.record((0, 0), solved=False)
    assert c.failure_rate((0, 0)) == pytest.approx(5 / 6)
    for _ in range(4):  # four successes push the four failures out
        c.record((0, 0), solved=True)
    assert c.failure_rate((0, 0)) == pytest.approx(1 / 6)


def test_focus_is_the_share_of_episodes_it_places():
    assert all(curriculum(focus=0.0).pick() is None for _ in range(200))
    c = curriculum(focus=0.3)
    placed = sum(c.pick() is not None for _ in range(4000)) / 4000
    assert placed == pytest.approx(0.3, abs=0.03)


def test_bad_settings_and_cells_are_refused_by_name():
    with pytest.raises(ValueError, match="layout focus must be in"):
        curriculum(focus=1.5)
    with pytest.raises(ValueError, match="layout window must be"):
        curriculum(window=0)
    c = curriculum()
    with pytest.raises(ValueError, match=r"cell \[0, 1\] is not a training cell"):
        c.record((0, 1), solved=False)
    c.record(None, solved=False)  # a simulator that does not say where: ignored
    assert np.allclose(c.weights(), 1 / 12)
