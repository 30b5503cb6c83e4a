"""Choosing the iso-level a decoder's meshes are extracted at, on training shapes.

IM-NET's point samples lean inside: a cell that the surface crosses contributes one of its *inside*
voxels (`imnet.sampling`), so near the surface the decoder sees more inside labels than the shape
has, and its 0.5 iso-surface sits a little outside the true one. The lean is what keeps thin parts
(legs, slats, five-star bases) in a small decoder, so it is not removed at its source
(docs/training.md, D2); instead the level is moved. Which level is right depends on the trained
decoder, so it is measured on the training shapes once IM-AE training ends, stored in the decoder
(`Decoder.level`, saved with the weights and inherited by IM-SVR), and used by validation,
`reconstruct.py`, `eval` and the app unless a level is given.

The criterion is a surface distance, not IoU: at a 64^3 lattice a high level that erases the legs
costs little volume, so IoU prefers higher levels than the meshes do. The boundary Chamfer distance
between the decoder's occupancy and the exact lattice occupancy (`occupancy_64`) penalises both a
fat surface and a missing leg, and on the demo's decoders its minimum falls where the meshes'
Chamfer distance and F-score at 128^3 are best (0.65-0.7).

    boundary_chamfer(predicted, truth)   symmetric mean distance between the two boundaries, in cells
    choose_level(fields, truths)         the candidate level with the least mean boundary Chamfer

numpy in, numpy out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["CANDIDATE_LEVELS", "boundary_chamfer", "choose_level"]

CANDIDATE_LEVELS = tuple(np.round(np.arange(0.3, 0.901, 0.05), 2).tolist())
"""Levels tried by `choose_level`: 0.3, 0.35, ..., 0.9."""


def _boundary(occupied: np.ndarray) -> np.ndarray:
    """Coordinates int [K, 3] of the occupied cells with an empty 6-neighbour (or on the grid's border)."""
    return np.argwhere(occupied & ~ndimage.binary_erosion(occupied, border_value=0))


def _chamfer(points_a: np.ndarray, points_b: np.ndarray, tree_b: cKDTree | None = None) -> float:
    if len(points_a) == 0 or len(points_b) == 0:
        return 0.0 if len(points_a) == len(points_b) else float("inf")
    tree_b = tree_b or cKDTree(points_b)
    # Boundaries hold a few thousand cells: nearest neighbours by k-d tree beat a distance transform
    # of the whole grid (4 ms against 26 ms at 64^3).
    return float(0.5 * (tree_b.query(points_a)[0].mean() + cKDTree(points_a).query(points_b)[0].mean()))


def boundary_chamfer(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Symmetric Chamfer distance between the boundary cells of two occupancy grids, in cells.

    Args:
        predicted, truth: bool [R, R, R] occupancy on the same lattice.

    Returns:
        (mean distance of predicted boundary cells to the nearest truth boundary cell + the same the
        other way) / 2; 0 for identical grids; inf when exactly one of them is empty.
    """
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape or predicted.ndim != 3:
        raise ValueError(f"predicted and truth must be [R, R, R] grids of one shape, got {predicted.shape} and {truth.shape}")
    return _chamfer(_boundary(predicted), _boundary(truth))


def choose_level(
    fields: list[np.ndarray] | np.ndarray,
    truths: list[np.ndarray] | np.ndarray,
    levels: tuple[float, ...] = CANDIDATE_LEVELS,
) -> tuple[float, dict[str, list[float]]]:
    """The iso-level whose surfaces lie nearest the true ones, over a set of shapes.

    Args:
        fields: float [N, R, R, R], the decoder's occupancy (in [0, 1]) at the lattice of N shapes.
        truths: bool [N, R, R, R], the exact occupancy at the same points.
        levels: the candidates, each in (0, 1).

    Returns:
        (best level, table): the table holds, per candidate level, "boundary_chamfer" (mean over
        shapes, in cells; inf where some shape vanishes) and "iou" (mean lattice IoU), for logs and
        diagnostics.json. Ties go to the level nearest 0.5.
    """
    if len(fields) != len(truths) or len(fields) == 0:
        raise ValueError(f"give one truth per field and at least one shape, got {len(fields)} fields and {len(truths)} truths")
    if not levels or not all(0.0 < level < 1.0 for level in levels):
        raise ValueError(f"levels must be in (0, 1), got {levels}")
    chamfer = np.zeros((len(fields), len(levels)))
    iou = np.zeros_like(chamfer)
    for i, (field, truth) in enumerate(zip(fields, truths)):
        truth = np.asarray(truth, dtype=bool)
        if truth.shape != np.shape(field) or truth.ndim != 3:
            raise ValueError(f"field and truth must be [R, R, R] grids of one shape, got {np.shape(field)} and {truth.shape}")
        edge = _boundary(truth)
        tree = cKDTree(edge) if len(edge) else None
        for j, level in enumerate(levels):
            predicted = np.asarray(field) > level
            chamfer[i, j] = _chamfer(_boundary(predicted), edge, tree)
            union = (predicted | truth).sum()
            iou[i, j] = (predicted & truth).sum() / union if union else 1.0
    mean = chamfer.mean(axis=0)  # inf at a level where some shape vanishes
    order = sorted(range(len(levels)), key=lambda j: (mean[j], abs(levels[j] - 0.5)))
    table = {"levels": [float(v) for v in levels], "boundary_chamfer": [round(float(v), 4) for v in mean],
             "iou": [round(float(v), 4) for v in iou.mean(axis=0)]}
    return float(levels[order[0]]), table
