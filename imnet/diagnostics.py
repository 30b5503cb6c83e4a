"""Diagnostics that name the way a model fails, rather than one number that hides it.

A reconstruction network can score a respectable mean IoU while answering every picture with the
same average shape. These measures tell that apart:

    code_statistics(codes)              are the AE's codes spread over shapes, or collapsed/saturated?
    code_error(predicted, target)       is the SVR's code error below that of always guessing the mean code?
    identification(predicted, truth)    is each reconstruction nearer its own shape than any other?

`identification` is the mean-shape detector. "Self-match" is the fraction of shapes whose
reconstruction has a higher IoU with its own ground truth than with the ground truth of every other
shape in the set; one prediction for every input scores at most 1/N, perfect ones 1.0. Beside it,
the mean IoU between reconstructions of *different* shapes ("pred-pred") and between their ground
truths ("gt-gt"): outputs more alike than the inputs (pred-pred well above gt-gt) mean the network
regresses to the mean.

All functions take numpy arrays and return plain dicts of floats (for logs and JSON reports).
"""

from __future__ import annotations

import numpy as np

__all__ = ["code_statistics", "code_error", "identification", "iou_matrix"]


def code_statistics(
    codes: np.ndarray,
    *,
    bounds: tuple[float, float] | None = None,
    tolerance: float = 0.01,
) -> dict[str, float]:
    """How the codes of a set of shapes spread.

    Args:
        codes: float [N, D], one code per shape (N >= 2).
        bounds: (low, high) of a bounded code activation (sigmoid: (0, 1), tanh: (-1, 1)); None
            for unbounded codes.
        tolerance: a value within ``tolerance * (high - low)`` of a bound counts as saturated.

    Returns:
        spread: mean over dimensions of the standard deviation over shapes (0: one code for all).
        spread_min / spread_max: the least and most spread dimension.
        dead_dims: dimensions whose spread is below 1% of the mean spread, or about 0 (unused by the
            encoder; all of them when every shape gets the same code).
        saturated_dims: dimensions saturated for at least 90% of the shapes (bounded codes only;
            0 for unbounded ones). Saturated dimensions carry no gradient and little information.
        dims: D.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) < 2:
        raise ValueError(f"codes must be [N, D] with N >= 2 shapes, got shape {codes.shape}")
    std = codes.std(axis=0)
    spread = float(std.mean())
    saturated = 0
    if bounds is not None:
        low, high = bounds
        margin = tolerance * (high - low)
        at_bound = (codes <= low + margin) | (codes >= high - margin)
        saturated = int((at_bound.mean(axis=0) >= 0.9).sum())
    return {
        "spread": spread,
        "spread_min": float(std.min()),
        "spread_max": float(std.max()),
        "dead_dims": int((std < max(0.01 * spread, 1e-9)).sum()),
        "saturated_dims": saturated,
        "dims": int(codes.shape[1]),
    }


def code_error(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The SVR's code error against the spread of the codes it regresses.

    Args:
        predicted, target: float [N, D] codes of the same N shapes.

    Returns:
        mse: mean squared error of the predictions.
        mean_code_mse: the error of answering every shape with the mean target code (the codes'
            variance): what a network that learnt only the average shape scores.
        ratio: mse / mean_code_mse. Near 1 or above: the predictions carry no more than the mean
            shape; near 0: the codes are regressed well.
    """
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    if predicted.shape != target.shape or predicted.ndim != 2:
        raise ValueError(f"predicted and target must both be [N, D], got {predicted.shape} and {target.shape}")
    mse = float(np.mean((predicted - target) ** 2))
    baseline = float(np.mean((target - target.mean(axis=0)) ** 2))
    return {"mse": mse, "mean_code_mse": baseline, "ratio": mse / baseline if baseline > 0 else float("inf")}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every occupancy vector of `a` with every one of `b`: bool [M, P], [K, P] -> float [M, K].

    A pair that is empty on both sides has IoU 1.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected occupancy vectors [M, P] and [K, P] over the same points, got {a.shape} and {b.shape}")
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(axis=1)[:, None] + fb.sum(axis=1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def identification(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Does each reconstruction pick out its own shape among all the others?

    Args:
        predicted: bool [N, P], occupancy of each reconstruction at P points (the same points for
            every shape, e.g. the cell centres of a 32^3 grid).
        truth: bool [N, P], the ground truth of the same N shapes at the same points.

    Returns:
        iou: mean IoU of each reconstruction with its own ground truth.
        self_match: fraction of shapes whose reconstruction has a strictly higher IoU with its own
            ground truth than with any other shape's (ties count as failures, so N identical
            predictions score at most 1/N).
        pred_pred: mean IoU between reconstructions of different shapes.
        gt_gt: mean IoU between ground truths of different shapes.
        shapes: N.
    """
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape or predicted.ndim != 2:
        raise ValueError(f"predicted and truth must both be [N, P], got {predicted.shape} and {truth.shape}")
    n = len(predicted)
    if n < 2:
        raise ValueError("identification needs at least 2 shapes")
    cross = iou_matrix(predicted, truth)
    own = np.diag(cross).copy()
    others = np.where(np.eye(n, dtype=bool), -np.inf, cross).max(axis=1)
    off_diagonal = ~np.eye(n, dtype=bool)
    return {
        "iou": float(own.mean()),
        "self_match": float(np.mean(own > others)),
        "pred_pred": float(iou_matrix(predicted, predicted)[off_diagonal].mean()),
        "gt_gt": float(iou_matrix(truth, truth)[off_diagonal].mean()),
        "shapes": int(n),
    }
