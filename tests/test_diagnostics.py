"""Diagnostics on known cases: a mean-shape predictor, perfect predictions, collapsed codes."""

import numpy as np
import pytest

from imnet.diagnostics import code_error, code_statistics, identification, iou_matrix


def random_shapes(n: int = 12, points: int = 4000, seed: int = 0) -> np.ndarray:
    """n distinct random occupancy vectors (each ~30% inside)."""
    return np.random.default_rng(seed).random((n, points)) < 0.3


def test_perfect_predictions_identify_every_shape():
    truth = random_shapes()
    result = identification(truth.copy(), truth)
    assert result["self_match"] == 1.0 and result["iou"] == 1.0
    assert result["pred_pred"] == pytest.approx(result["gt_gt"])


@pytest.mark.parametrize("which", [0, 5])
def test_one_prediction_for_every_input_scores_at_most_one_over_n(which):
    truth = random_shapes()
    same = np.repeat(truth[which : which + 1], len(truth), axis=0)  # always answer with one shape
    result = identification(same, truth)
    assert result["self_match"] <= 1 / len(truth) + 1e-9
    assert result["self_match"] == pytest.approx(1 / len(truth))  # exactly the shape it always gives
    assert result["pred_pred"] == 1.0 > result["gt_gt"]  # outputs far more alike than the inputs


def test_the_mean_shape_identifies_at_most_one_shape():
    truth = random_shapes()
    mean_shape = np.repeat(truth.mean(axis=0, keepdims=True) >= 0.25, len(truth), axis=0)
    result = identification(mean_shape, truth)
    assert result["self_match"] <= 1 / len(truth) + 1e-9 and result["pred_pred"] == 1.0


def test_ties_are_failures():
    truth = random_shapes(n=4)
    truth[1] = truth[0]  # two shapes that cannot be told apart
    result = identification(truth.copy(), truth)
    assert result["self_match"] == pytest.approx(2 / 4)


def test_swapped_predictions_are_counted_as_misses():
    truth = random_shapes(n=6)
    predicted = truth[[1, 0, 2, 3, 4, 5]]  # the first two answers are each other's shape
    assert identification(predicted, truth)["self_match"] == pytest.approx(4 / 6)


def test_iou_matrix_values():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    b = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_allclose(iou_matrix(a, b), [[0.5, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="same points"):
        iou_matrix(a, b[:, :3])


def test_code_statistics_sees_collapse_and_saturation():
    rng = np.random.default_rng(0)
    spread = code_statistics(rng.normal(size=(50, 8)))
    assert spread["spread"] == pytest.approx(1.0, abs=0.2) and spread["dead_dims"] == 0
    collapsed = code_statistics(np.tile(rng.normal(size=(1, 8)), (50, 1)))
    assert collapsed["spread"] == pytest.approx(0.0, abs=1e-12) and collapsed["dead_dims"] == 8
    saturated = np.concatenate([rng.random((50, 4)), rng.choice([1e-7, 1 - 1e-7], size=(50, 4))], axis=1)
    assert code_statistics(saturated, bounds=(0.0, 1.0))["saturated_dims"] == 4
    with pytest.raises(ValueError, match="N >= 2"):
        code_statistics(np.zeros((1, 4)))


def test_code_error_against_the_mean_code():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(200, 16))
    mean_guess = code_error(np.repeat(target.mean(0, keepdims=True), 200, axis=0), target)
    assert mean_guess["ratio"] == pytest.approx(1.0)
    assert code_error(target, target)["ratio"] == 0.0
    assert code_error(target + 0.1 * rng.normal(size=target.shape), target)["ratio"] == pytest.approx(0.01, rel=0.2)
