"""The iso-level calibration: boundary Chamfer distance and the level it picks."""

from __future__ import annotations

import numpy as np
import pytest

from imnet.calibration import CANDIDATE_LEVELS, boundary_chamfer, choose_level

R = 32


def ball(radius: float, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """float [R, R, R]: distance-to-centre of each cell centre, in cells, minus `radius` (negative inside)."""
    axis = np.arange(R) - (R - 1) / 2
    x, y, z = np.meshgrid(axis - centre[0], axis - centre[1], axis - centre[2], indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2) - radius


def test_boundary_chamfer_is_zero_for_equal_grids_and_one_for_a_one_cell_shift():
    truth = ball(8) < 0
    assert boundary_chamfer(truth, truth) == 0.0
    shifted = np.roll(truth, 1, axis=0)
    assert 0.3 < boundary_chamfer(shifted, truth) <= 1.0
    # A ball two cells larger: every boundary cell is about two cells from the other boundary.
    assert boundary_chamfer(ball(10) < 0, truth) == pytest.approx(2.0, abs=0.35)
    assert boundary_chamfer(truth, ball(10) < 0) == pytest.approx(boundary_chamfer(ball(10) < 0, truth))


def test_boundary_chamfer_of_an_empty_grid():
    truth = ball(8) < 0
    empty = np.zeros_like(truth)
    assert boundary_chamfer(empty, truth) == float("inf")
    assert boundary_chamfer(empty, empty) == 0.0
    with pytest.raises(ValueError, match=r"\[R, R, R\]"):
        boundary_chamfer(truth[0], truth[0])


def test_choose_level_finds_the_level_whose_surface_is_the_true_one():
    """A field that is too fat, like a decoder trained on samples that lean inside: its 0.7 iso-surface
    is the true sphere, its 0.5 one lies about a cell and a half outside."""
    truths = [ball(r, c) < 0 for r, c in ((8, (0, 0, 0)), (6, (3, -2, 1)), (10, (-1, 2, 0)))]
    slope = 1.0  # per cell
    fields = [1 / (1 + np.exp(slope * ball(r, c) - np.log(0.7 / 0.3))) for r, c in ((8, (0, 0, 0)), (6, (3, -2, 1)), (10, (-1, 2, 0)))]
    level, table = choose_level(fields, truths)
    assert level == 0.7
    assert table["levels"] == list(CANDIDATE_LEVELS)
    at = dict(zip(table["levels"], table["boundary_chamfer"]))
    assert at[0.7] == 0.0 and at[0.5] > 0.5
    assert max(table["iou"]) == table["iou"][table["levels"].index(0.7)] == 1.0


def test_choose_level_prefers_levels_near_one_half_on_ties_and_avoids_vanishing_shapes():
    truth = ball(8) < 0
    step = truth.astype(np.float32)  # a field that is 0 or 1: every level gives the same surface
    level, table = choose_level([step], [truth])
    assert level == 0.5 and set(table["boundary_chamfer"]) == {0.0}
    faint = np.where(truth, 0.45, 0.0)  # the shape exists only below 0.45
    level, table = choose_level([faint, step], [truth, truth])
    assert level < 0.45 and np.isinf(dict(zip(table["levels"], table["boundary_chamfer"]))[0.5])


def test_choose_level_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one truth per field"):
        choose_level([np.zeros((4, 4, 4))], [])
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        choose_level([np.zeros((4, 4, 4))], [np.zeros((4, 4, 4), bool)], levels=(0.0, 0.5))
