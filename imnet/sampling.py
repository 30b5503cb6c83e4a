"""IM-NET's point/occupancy sampling from 256^3 solid voxels.

The training data of IM-NET stores, per shape, three point sets whose coordinates are uint8 indices
into the 256^3 solid grid (columns x, y, z) and whose values are the solid grid at those indices:

- ``points_16`` (4096 points): the grid is split into 16^3 blocks of 16^3 voxels; each block gives one
  random voxel, an inside one when the block has any, else an outside one.
- ``points_32`` (4096) and ``points_64`` (16384): points near the surface, chosen on the 32^3 (resp.
  64^3) down-sampled grid as described below, topped up with random cells away from the surface.

Exact rules used here (the published description leaves them implicit):

- Down-sampled grid: an R^3 cell (a block of (256/R)^3 voxels) is *inside* when any of its voxels is
  inside (max-pooling, the same rule as the stored 64^3 ``voxels``).
- A cell is *near the surface* when the 3x3x3 block of cells around it, clipped at the grid border,
  holds both inside and outside cells, or when the cell itself holds both inside and outside voxels
  (the surface can pass through a cell whose neighbours are all inside after max-pooling).
- Each chosen cell contributes one voxel drawn uniformly among its voxels that have the cell's value.
  Under max-pooling such a voxel always exists: an inside cell has an inside voxel and an outside
  cell has only outside voxels. So near-surface points lean towards the inside, as in IM-NET.
  That makes decoders a little fat, but it is what keeps thin parts: drawing inside and outside
  voxels of such cells with equal chances lost legs and five-star bases (docs/training.md D2).
- When more cells are near the surface than the level's point count, a random subset is kept; when
  fewer, the rest are random cells away from the surface (with a random voxel in each). Each cell
  gives at most one point, so the points of a level are distinct.

Degenerate grids: an empty grid gives only outside points (values 0) and a full grid only inside
points (values 1); neither has cells near the surface, so levels 32 and 64 are random cells.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

__all__ = ["GRID", "POINT_COUNTS", "indices_to_coords", "downsample_voxels", "sample_points"]

GRID = 256
"""Resolution of the solid grid that point indices refer to."""

POINT_COUNTS = {16: 4096, 32: 4096, 64: 16384}
"""Number of points per sampling level in IM-NET's published layout."""


def indices_to_coords(indices: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Continuous object-space positions of voxel indices.

    Args:
        indices: integer array [..., 3], voxel indices (x, y, z) into a ``grid``^3 grid over
            [-0.5, 0.5]^3.
        grid: resolution of that grid (256 for IM-NET's published data).

    Returns:
        float32 [..., 3], the voxel centres ``(index + 0.5) / grid - 0.5``.
    """
    return (np.asarray(indices, dtype=np.float32) + 0.5) / np.float32(grid) - 0.5


def downsample_voxels(solid: np.ndarray, size: int = 64) -> np.ndarray:
    """Max-pool a cubic occupancy grid: a coarse cell is inside when any of its voxels is.

    Args:
        solid: bool (or 0/1) [R, R, R] occupancy, indexed [x, y, z]; R must be a multiple of ``size``.
        size: resolution of the result.

    Returns:
        bool [size, size, size].
    """
    solid = np.asarray(solid)
    if solid.ndim != 3 or len(set(solid.shape)) != 1 or solid.shape[0] % size:
        raise ValueError(
            f"expected a cubic occupancy grid whose side is a multiple of {size}, got shape "
            f"{solid.shape}; pass size= dividing the grid side"
        )
    return _block_reduce(solid.astype(bool, copy=False), solid.shape[0] // size, np.any)


def sample_points(solid256: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sample IM-NET's three point sets from a 256^3 solid grid.

    Args:
        solid256: bool (or 0/1) [256, 256, 256] solid occupancy, indexed [x, y, z].
        rng: source of randomness; the result is a deterministic function of its state.

    Returns:
        dict with ``points_16`` uint8 [4096, 3], ``values_16`` uint8 [4096, 1], ``points_32``
        uint8 [4096, 3], ``values_32`` uint8 [4096, 1], ``points_64`` uint8 [16384, 3] and
        ``values_64`` uint8 [16384, 1]. Points are indices (x, y, z) into the 256^3 grid (see
        ``indices_to_coords``); values are the solid grid at those points (1 inside, 0 outside).
        See the module docstring for the exact sampling rules.
    """
    solid = np.asarray(solid256)
    if solid.shape != (GRID, GRID, GRID):
        raise ValueError(
            f"expected a [{GRID}, {GRID}, {GRID}] solid grid, got shape {solid.shape}; "
            f"voxelise at {GRID}^3 first"
        )
    solid = solid.astype(bool, copy=False)

    # Pool hierarchically (256 -> 64 -> 32 -> 16): each step reads a grid 8x smaller.
    any_inside = {64: _block_reduce(solid, 4, np.any)}
    all_inside = {64: _block_reduce(solid, 4, np.all)}
    for res in (32, 16):
        any_inside[res] = _block_reduce(any_inside[2 * res], 2, np.any)
        all_inside[res] = _block_reduce(all_inside[2 * res], 2, np.all)

    out = {}
    for res in (16, 32, 64):
        if res == 16:
            cells = np.arange(res**3)
        else:
            cells = _near_surface_cells(any_inside[res], all_inside[res], POINT_COUNTS[res], rng)
        points = _pick_voxels(solid, cells, res, any_inside[res], all_inside[res], rng)
        out[f"points_{res}"] = points
        out[f"values_{res}"] = solid[points[:, 0], points[:, 1], points[:, 2]].astype(np.uint8)[:, None]
    return out


def lattice_occupancy(solid256: np.ndarray, size: int = 64) -> np.ndarray:
    """The solid grid on a size^3 sub-lattice of its voxels: exact labels for validation IoU.

    Entry [i, j, k] is ``solid256[s*i + s//2, s*j + s//2, s*k + s//2]`` with s = 256 / size: the
    voxel whose lower corner is the centre of cell (i, j, k) of a size^3 grid. Its points
    (``lattice_points``) lie half a 256^3 voxel off those cell centres, where the solid grid, the
    source of every training label, is known exactly.

    Returns:
        uint8 [size, size, size], 1 inside.
    """
    solid = np.asarray(solid256)
    if solid.shape != (GRID, GRID, GRID) or GRID % size:
        raise ValueError(f"expected a [{GRID}]^3 solid grid and a size dividing {GRID}, got {solid.shape} and {size}")
    step = GRID // size
    return solid[step // 2 :: step, step // 2 :: step, step // 2 :: step].astype(np.uint8)


def lattice_points(size: int = 64) -> np.ndarray:
    """Object-space points of ``lattice_occupancy(..., size)``: float32 [size, size, size, 3]."""
    step = GRID // size
    axis = indices_to_coords(np.arange(step // 2, GRID, step))
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)


def _block_reduce(grid: np.ndarray, factor: int, op: Callable) -> np.ndarray:
    """Reduce a cubic grid over blocks of factor^3 cells with ``op`` (np.any / np.all)."""
    n = grid.shape[0]
    m = n // factor
    # One axis at a time keeps every reduction over contiguous memory: ~8x faster than reducing
    # the axes (1, 3, 5) of a [m, f, m, f, m, f] view in one call.
    grid = op(grid.reshape(m, factor, n * n), axis=1)
    grid = op(grid.reshape(m, m, factor, n), axis=2)
    return op(grid.reshape(m, m, m, factor), axis=3)


def _near_surface_cells(
    any_inside: np.ndarray, all_inside: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Flat indices of ``count`` distinct cells: near-surface ones first, random others after."""
    occupied = any_inside.view(np.uint8)
    # mode="nearest" repeats the border cells, which is the same as clipping the 3x3x3 block.
    mixed_neighbourhood = ndimage.maximum_filter(occupied, size=3, mode="nearest") != (
        ndimage.minimum_filter(occupied, size=3, mode="nearest")
    )
    near = mixed_neighbourhood | (any_inside & ~all_inside)
    near_cells = np.flatnonzero(near)
    if near_cells.size >= count:
        return np.sort(rng.choice(near_cells, size=count, replace=False))
    fill = rng.choice(np.flatnonzero(~near), size=count - near_cells.size, replace=False)
    return np.concatenate([near_cells, np.sort(fill)])


def _pick_voxels(
    solid: np.ndarray,
    cells: np.ndarray,
    res: int,
    any_inside: np.ndarray,
    all_inside: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One random voxel per cell of the res^3 grid, with the cell's max-pooled value.

    Returns uint8 [len(cells), 3] indices into the 256^3 grid.
    """
    side = GRID // res
    corner = np.stack(np.unravel_index(cells, (res, res, res)), axis=1)
    # A cell that is all inside or all outside: any voxel has the cell's value.
    offset = rng.integers(0, side, size=(cells.size, 3))

    # A cell holding both values is inside after max-pooling: draw among its inside voxels only,
    # by giving them random keys and the others -1 and taking the largest key per cell.
    both = np.flatnonzero(any_inside.ravel()[cells] & ~all_inside.ravel()[cells])
    if both.size:
        i, j, k = corner[both].T
        blocks = solid.reshape(res, side, res, side, res, side)[i, :, j, :, k, :]
        blocks = blocks.reshape(both.size, side**3)
        keys = rng.random(blocks.shape, dtype=np.float32)
        keys[~blocks] = -1.0
        offset[both] = np.stack(np.unravel_index(keys.argmax(axis=1), (side,) * 3), axis=1)
    return (corner * side + offset).astype(np.uint8)
