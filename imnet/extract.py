"""Meshes from occupancy fields: sample on a grid (dense or coarse-to-fine), then marching cubes.

A *field* is any callable ``field(points) -> occupancy``: float32 points [N, 3] in object space
[-0.5, 0.5]^3 in, float32 occupancy [N] in [0, 1] out (1 inside). A trained decoder with a fixed
shape code is one; so is an analytic shape. Evaluating a decoder is the expensive part of meshing,
so the functions here count field evaluations.

Grid convention (the same as the training data): a resolution-R grid samples the field at the R^3
cell centres ``(i + 0.5) / R - 0.5``, i = 0..R-1, and is indexed ``[x, y, z]``.

Coarse-to-fine sampling
-----------------------
:func:`coarse_to_fine_grid` samples the same grid as :func:`dense_grid` but evaluates the field only
near the surface:

1. The grid is padded by one "outside" point on every side (the padding marching cubes sees too),
   and a coarse lattice of every ``stride``-th padded index (plus the last one) is evaluated. Every
   coarser lattice is a subset of every finer one, so values are reused exactly, and any R works.
2. Level by level the stride halves. Cells of the previous lattice whose corners are mixed (some
   above ``level``, some not) are subdivided and all new lattice points in them are evaluated. Points
   that are not evaluated take the value of the nearest coarser lattice point below them, which is
   the corner of a cell that was all inside or all outside: nothing is interpolated, so marching
   cubes only ever sees evaluated values where the surface is.
3. Neighbour rule: after each batch of evaluations, every cell that now has mixed corners but
   unevaluated ones gets those corners evaluated, until no such cell is left. This follows the
   surface out of the subdivided cells -- along a thin leg or slat that the coarse lattice stepped
   over, across a cell face the coarse corners did not see the surface cross.
4. Optionally, "mixed" is also taken with respect to a lower ``gap_level`` (say ``level / 2``), so
   the refinement crosses narrow gaps where the field dips below ``level`` without falling to 0: a
   decoder may draw a thin leg as dashes, and then the dashes beyond the first gap are found too.
   This traces a second surface, so it costs up to twice the evaluations for a soft field.

Result: every grid cell that the surface crosses has all 8 corners evaluated, so the occupancy
(``values > level``) and the marching-cubes mesh equal the dense ones, except for connected pieces of
inside (or outside) that contain no evaluated point at all: detached parts thinner than the coarse
spacing that lie between coarse samples (and, with ``gap_level``, with no trail of field values
above ``gap_level`` leading to them). Parts attached to something the coarse lattice sees are
recovered at any coarse spacing; raise ``coarse_resolution`` to catch small detached ones.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable

import numpy as np
import trimesh
from skimage.measure import marching_cubes

__all__ = [
    "Field",
    "DEFAULT_MAX_BATCH_POINTS",
    "DEFAULT_COARSE_RESOLUTION",
    "ExtractionStats",
    "dense_grid",
    "coarse_to_fine_grid",
    "grid_to_mesh",
    "extract_mesh",
]

Field = Callable[[np.ndarray], np.ndarray]

DEFAULT_MAX_BATCH_POINTS = 32768
"""Points per field call: an IM-NET decoder's widest layer (2048) then holds 256 MiB of float32.
The one default of the project: every config and program takes it from here."""

DEFAULT_COARSE_RESOLUTION = 32
"""Cells per axis of the first lattice. Occupancy Networks' MISE starts at 32^3 too."""

# Grid elements per chunk when filling unevaluated points, to keep temporaries small at R = 512.
_FILL_CHUNK_ELEMENTS = 1 << 22

# Offsets of a cell's 8 corners, [8, 3].
_CORNERS = np.indices((2, 2, 2)).reshape(3, -1).T


@dataclasses.dataclass
class ExtractionStats:
    """What sampling a field on a grid cost.

    Attributes:
        method: "dense" or "coarse_to_fine".
        resolution: grid resolution R.
        evaluations: points passed to the field in total.
        field_calls: number of calls to the field (batches).
        seconds: wall time of the sampling (field calls included, marching cubes not).
        evaluations_per_level: lattice stride -> points evaluated at that level (coarse first).
        neighbour_rounds_per_level: lattice stride -> rounds of the neighbour rule that evaluated
            something.
    """

    method: str
    resolution: int
    evaluations: int
    field_calls: int
    seconds: float
    evaluations_per_level: dict[int, int] = dataclasses.field(default_factory=dict)
    neighbour_rounds_per_level: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def reduction(self) -> float:
        """How many times fewer evaluations than the dense grid (R^3) this took."""
        return self.resolution**3 / max(self.evaluations, 1)


def dense_grid(
    field: Field, resolution: int, *, max_batch_points: int = DEFAULT_MAX_BATCH_POINTS
) -> np.ndarray:
    """Evaluate ``field`` at every cell centre of a resolution-R grid (the reference sampler).

    Args:
        field: callable, float32 points [N, 3] -> occupancy [N] (or [N, 1]).
        resolution: R >= 2, cells per axis.
        max_batch_points: at most this many points per field call.

    Returns:
        float32 [R, R, R], indexed [x, y, z]; entry [i, j, k] is the field at
        ``((i, j, k) + 0.5) / R - 0.5``.
    """
    values, _ = _dense_grid(field, resolution, max_batch_points)
    return values


def coarse_to_fine_grid(
    field: Field,
    resolution: int,
    *,
    level: float = 0.5,
    coarse_resolution: int | None = None,
    gap_level: float | None = None,
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS,
) -> tuple[np.ndarray, ExtractionStats]:
    """Sample ``field`` on a resolution-R grid, evaluating it only near the ``level`` surface.

    See the module docstring for the scheme. Thresholded at ``level``, the result equals
    :func:`dense_grid`'s except for detached pieces smaller than the coarse spacing that fall
    between coarse samples; at every point where the surface is, the values are the field's own,
    so marching cubes gives the dense grid's mesh.

    Args:
        field: callable, float32 points [N, 3] -> occupancy [N] (or [N, 1]) in [0, 1].
        resolution: R >= 2, cells per axis of the result.
        level: iso-level separating inside (> level) from outside, in (0, 1).
        coarse_resolution: about how many cells per axis the first lattice has (its stride is the
            largest power of two with ``stride * coarse_resolution <= R``). Default 32. Higher finds
            smaller detached parts and costs more; ``coarse_resolution >= R`` is dense sampling.
        gap_level: a second, lower level in (0, level) whose crossings are refined too (step 4 of
            the module docstring), e.g. ``level / 2`` to find dashes of thin parts beyond gaps;
            default None: follow only the ``level`` surface.
        max_batch_points: at most this many points per field call.

    Returns:
        values: float32 [R, R, R], indexed [x, y, z]. Evaluated points hold the field's values;
            the others hold a copy of the coarser sample that decided they are inside or outside.
        stats: evaluation counts per level, field calls, time.

    Memory: one float32 and one bool (R + 2)^3 array (680 MB at R = 512; ``values`` is a view into
    the float32 one) plus work arrays of the size of the surface: a chair at R = 512 peaks at
    1.2 GB.
    """
    start_time = time.perf_counter()
    resolution = _check_resolution(resolution)
    level = _check_level(level)
    if gap_level is not None and not 0.0 < gap_level < level:
        raise ValueError(
            f"gap_level must be None or in (0, level) = (0, {level}); got {gap_level!r}"
        )
    stride = _coarse_stride(resolution, coarse_resolution)
    sampler = _FieldSampler(field, resolution, max_batch_points)
    grid = _RefinedGrid(sampler, resolution, level, gap_level)
    per_level, rounds_per_level = {}, {}

    lattice = grid.lattice(stride)
    grid.evaluate_lattice(lattice)
    per_level[stride] = sampler.evaluations
    # With stride 1 the first lattice is the whole grid: nothing is left to refine.
    mixed = grid.mixed_cells_of_lattice(lattice) if stride > 1 else None
    while stride > 1:
        stride //= 2
        coarse, lattice = lattice, grid.lattice(stride)
        before = sampler.evaluations
        grid.fill_unevaluated(lattice, coarse)
        mixed, rounds_per_level[stride] = grid.refine(lattice, _child_cells(mixed, coarse, lattice))
        per_level[stride] = sampler.evaluations - before

    stats = ExtractionStats(
        method="coarse_to_fine",
        resolution=resolution,
        evaluations=sampler.evaluations,
        field_calls=sampler.calls,
        seconds=time.perf_counter() - start_time,
        evaluations_per_level=per_level,
        neighbour_rounds_per_level=rounds_per_level,
    )
    return grid.interior, stats


def grid_to_mesh(
    values: np.ndarray, *, level: float = 0.5, bounds: np.ndarray | None = None
) -> trimesh.Trimesh:
    """Marching cubes on a cell-centred occupancy grid, giving a closed, outward-facing mesh.

    The grid is padded with one layer of 0 (outside), so parts touching the grid border are capped
    and the mesh is closed.

    Args:
        values: float [X, Y, Z] occupancy grid indexed [x, y, z], larger inside.
        level: iso-level in (0, 1).
        bounds: float [2, 3], (min corner, max corner) of the box the grid's cells tile; default
            the object-space cube [-0.5, 0.5]^3. Cell (i, j, k) has centre
            ``min + ((i, j, k) + 0.5) * (max - min) / (X, Y, Z)``.

    Returns:
        Mesh with vertices in the coordinates of ``bounds`` and faces wound so that normals point
        out of the inside region (positive volume). An empty mesh (no vertices) when no value
        exceeds ``level``.
    """
    values = np.asarray(values)
    if values.ndim != 3 or min(values.shape) < 1:
        raise ValueError(
            f"values must be a 3D grid [X, Y, Z]; got an array of shape {values.shape}"
        )
    level = _check_level(level)
    low, high = _check_bounds(bounds)

    inside = values > level
    if not inside.any():
        return trimesh.Trimesh()
    # Marching cubes only on the box around the inside points (plus one cell), which is all that
    # can produce triangles; at high resolution this saves most of the work and memory.
    start, stop = [], []
    for axis in range(3):
        occupied = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        start.append(max(occupied[0] - 1, 0))
        stop.append(min(occupied[-1] + 2, values.shape[axis]))
    crop = values[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    padded = np.pad(crop.astype(np.float32, copy=False), 1, constant_values=0.0)
    vertices, faces, _, _ = marching_cubes(padded, level=level)

    cell_index = vertices - 1 + np.asarray(start)
    cell_size = (high - low) / np.asarray(values.shape)
    vertices = low + (cell_index + 0.5) * cell_size
    # skimage winds the triangles of a field that is larger inside so that their normals point
    # inwards (the mesh has negative volume); reverse the winding.
    faces = faces[:, ::-1]
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def extract_mesh(
    field: Field,
    resolution: int = 128,
    *,
    level: float = 0.5,
    method: str = "coarse_to_fine",
    coarse_resolution: int | None = None,
    gap_level: float | None = None,
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS,
) -> tuple[trimesh.Trimesh, ExtractionStats]:
    """Field -> grid -> mesh in one call.

    Args:
        field: callable, float32 points [N, 3] in [-0.5, 0.5]^3 -> occupancy [N] (or [N, 1]).
        resolution: R >= 2, grid cells per axis.
        level: iso-level in (0, 1).
        method: "coarse_to_fine" (:func:`coarse_to_fine_grid`) or "dense" (:func:`dense_grid`).
        coarse_resolution, gap_level: see :func:`coarse_to_fine_grid`; ignored by "dense".
        max_batch_points: at most this many points per field call.

    Returns:
        mesh: closed mesh in object space with outward normals (see :func:`grid_to_mesh`); empty,
            with a warning, when the field exceeds ``level`` nowhere on the grid.
        stats: evaluation counts and sampling time.
    """
    level = _check_level(level)  # before sampling, which may take minutes
    if method == "coarse_to_fine":
        values, stats = coarse_to_fine_grid(
            field,
            resolution,
            level=level,
            coarse_resolution=coarse_resolution,
            gap_level=gap_level,
            max_batch_points=max_batch_points,
        )
    elif method == "dense":
        values, stats = _dense_grid(field, resolution, max_batch_points)
    else:
        raise ValueError(f'method must be "coarse_to_fine" or "dense"; got {method!r}')
    mesh = grid_to_mesh(values, level=level)
    if mesh.is_empty:
        warnings.warn(
            f"the field exceeds level {level} nowhere on the {resolution}^3 grid (largest value "
            f"{float(values.max()):.3g}), so the mesh is empty. For a decoder this usually means a "
            f"wrong shape code or a checkpoint that did not load; for a thin shape, try a higher "
            f"resolution or coarse_resolution.",
            stacklevel=2,
        )
    return mesh, stats


class _FieldSampler:
    """Calls a field at grid points in batches, checks what it returns, counts evaluations."""

    def __init__(self, field: Field, resolution: int, max_batch_points: int):
        if not callable(field):
            raise TypeError(
                f"field must be a callable points [N, 3] -> occupancy [N]; got {type(field).__name__}"
            )
        if int(max_batch_points) < 1:
            raise ValueError(f"max_batch_points must be at least 1; got {max_batch_points}")
        self.field = field
        self.resolution = resolution
        self.batch = int(max_batch_points)
        self.evaluations = 0
        self.calls = 0

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """Field values at grid indices [M, 3] (0..R-1) -> float32 [M]."""
        out = np.empty(len(indices), dtype=np.float32)
        for begin in range(0, len(indices), self.batch):
            chunk = indices[begin : begin + self.batch]
            points = ((chunk + 0.5) / self.resolution - 0.5).astype(np.float32)
            out[begin : begin + len(chunk)] = self._call(points)
        return out

    def _call(self, points: np.ndarray) -> np.ndarray:
        n = len(points)
        result = np.asarray(self.field(points))
        if result.shape not in ((n,), (n, 1)):
            raise ValueError(
                f"the field returned an array of shape {result.shape} for {n} points; it must "
                f"return one occupancy value per point, shape ({n},) (or ({n}, 1))"
            )
        result = result.reshape(n).astype(np.float32, copy=False)
        if not np.isfinite(result).all():
            raise ValueError(
                f"the field returned {int((~np.isfinite(result)).sum())} non-finite values for "
                f"{n} points; it must return finite occupancy in [0, 1]"
            )
        self.evaluations += n
        self.calls += 1
        return result


class _RefinedGrid:
    """The state of coarse-to-fine sampling, on the grid padded by one outside point per side.

    Points are named by padded indices u = i + 1 [3] (u = 0 and u = R + 1 are the padding: value 0,
    counted as evaluated) or by their flat index ("key") in the padded [R + 2]^3 arrays. A lattice
    is a sorted array of padded indices, the same on every axis; a cell of a lattice is named by the
    lattice positions [3] of its lowest corner.
    """

    def __init__(
        self, sampler: _FieldSampler, resolution: int, level: float, gap_level: float | None
    ):
        self.sample = sampler
        self.level = level
        self.gap_level = gap_level
        size = resolution + 2
        self.values = np.zeros((size,) * 3, dtype=np.float32)
        self.evaluated = np.ones((size,) * 3, dtype=bool)
        self.evaluated[1:-1, 1:-1, 1:-1] = False

    @property
    def interior(self) -> np.ndarray:
        """The values of the grid proper, [R, R, R] (a view)."""
        return self.values[1:-1, 1:-1, 1:-1]

    def lattice(self, stride: int) -> np.ndarray:
        """Padded indices 0, stride, 2 * stride, ... and the last one, R + 1."""
        last = len(self.values) - 1
        return np.union1d(np.arange(0, last, stride), [last])

    def evaluate_lattice(self, lattice: np.ndarray) -> None:
        """Evaluate every grid point of lattice^3 (in chunks, so a fine lattice fits in memory)."""
        real = lattice[1:-1]
        n = len(real)
        for begin in range(0, n**3, self.sample.batch):
            flat = np.arange(begin, min(begin + self.sample.batch, n**3))
            self._evaluate(real[np.stack(np.unravel_index(flat, (n, n, n)), axis=1)])

    def mixed_cells_of_lattice(self, lattice: np.ndarray) -> np.ndarray:
        """Cells [K, 3] of a fully evaluated lattice whose corners straddle a level."""
        corners = self.values[np.ix_(lattice, lattice, lattice)]
        windows = np.lib.stride_tricks.sliding_window_view(corners, (2, 2, 2))
        low, high = windows.min(axis=(-3, -2, -1)), windows.max(axis=(-3, -2, -1))
        return np.argwhere(self._straddles(low, high))

    def fill_unevaluated(self, lattice: np.ndarray, coarse: np.ndarray) -> None:
        """Give every unevaluated point of lattice^3 the value of its coarse-lattice floor point.

        That point is a corner of the coarse cell holding the fine point; the cell was not
        subdivided, so all its corners agree on inside/outside and the copy is on the right side.
        """
        floor = coarse[np.searchsorted(coarse, lattice, side="right") - 1]
        n = len(lattice)
        rows = max(1, _FILL_CHUNK_ELEMENTS // n**2)
        for begin in range(0, n, rows):
            x = slice(begin, begin + rows)
            # Only coarse lattice points are read, and filling leaves those unchanged, so filling
            # in place chunk by chunk is safe.
            source = self.values.take(floor[x], axis=0).take(floor, axis=1).take(floor, axis=2)
            if n == len(self.values):  # the finest lattice is the whole grid: fill views in place
                np.copyto(self.values[x], source, where=~self.evaluated[x])
                continue
            block_index = np.ix_(lattice[x], lattice, lattice)
            block = self.values[block_index]
            np.copyto(block, source, where=~self.evaluated[block_index])
            self.values[block_index] = block

    def refine(self, lattice: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, int]:
        """Evaluate the corners of ``cells`` [K, 3], then apply the neighbour rule until stable.

        Returns the cells of ``lattice`` whose corners straddle a level (all of them evaluated),
        and the number of neighbour rounds that evaluated something.
        """
        new = self._evaluate_new(self._corner_keys(lattice, cells))
        frontier = _unique_rows(np.concatenate([cells, self._cells_touching(lattice, new)]))
        straddling, rounds = [np.empty((0, 3), dtype=cells.dtype)], 0
        while len(frontier):
            keys = self._corner_keys(lattice, frontier)
            values = np.take(self.values, keys)
            mixed = self._straddles(values.min(axis=1), values.max(axis=1))
            complete = np.take(self.evaluated, keys).all(axis=1)
            straddling.append(frontier[mixed & complete])
            if complete[mixed].all():
                break
            rounds += 1
            new = self._evaluate_new(keys[mixed & ~complete])
            frontier = self._cells_touching(lattice, new)
        return _unique_rows(np.concatenate(straddling)), rounds

    def _straddles(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Whether cells with corner values in [low, high] straddle level (or gap_level)."""
        straddles = (high > self.level) & (low <= self.level)
        if self.gap_level is not None:
            straddles |= (high > self.gap_level) & (low <= self.gap_level)
        return straddles

    def _corner_keys(self, lattice: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Keys [K, 8] of the corners of ``cells`` [K, 3]."""
        padded = lattice[cells[:, None, :] + _CORNERS]
        return np.ravel_multi_index(np.moveaxis(padded, -1, 0), self.values.shape)

    def _evaluate_new(self, keys: np.ndarray) -> np.ndarray:
        """Evaluate the not yet evaluated points among ``keys``; returns their padded indices [M, 3]."""
        keys = _unique(keys.reshape(-1))
        keys = keys[~np.take(self.evaluated, keys)]
        padded = np.stack(np.unravel_index(keys, self.values.shape), axis=1)
        self._evaluate(padded)
        return padded

    def _evaluate(self, padded: np.ndarray) -> None:
        index = tuple(padded.T)
        self.values[index] = self.sample(padded - 1)
        self.evaluated[index] = True

    @staticmethod
    def _cells_touching(lattice: np.ndarray, padded: np.ndarray) -> np.ndarray:
        """Cells [K, 3] of ``lattice`` with one of the lattice points ``padded`` [M, 3] as corner."""
        position = np.searchsorted(lattice, padded)
        cells = (position[:, None, :] - _CORNERS).reshape(-1, 3)
        cells = cells[np.all((cells >= 0) & (cells < len(lattice) - 1), axis=1)]
        return _unique_rows(cells)


def _child_cells(cells: np.ndarray, coarse: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """The cells [K', 3] of ``lattice`` that make up the ``coarse`` cells [K, 3].

    The stride halves between the lattices, so a coarse cell spans 1 or 2 fine cells per axis.
    """
    fine_position = np.searchsorted(lattice, coarse)
    low, high = fine_position[cells], fine_position[cells + 1]
    children = low[:, None, :] + _CORNERS
    return children[np.all(children < high[:, None, :], axis=2)]


def _unique_rows(rows: np.ndarray) -> np.ndarray:
    """Unique rows of a non-negative int array [M, 3]."""
    if not len(rows):
        return rows.reshape(0, 3)
    dims = rows.max(axis=0) + 1
    return np.stack(np.unravel_index(_unique(np.ravel_multi_index(rows.T, dims)), dims), axis=1)


def _unique(keys: np.ndarray) -> np.ndarray:
    """Sorted unique values of a 1D int array."""
    # return_counts makes numpy take its sort-based path: for millions of distinct keys its default
    # hash-based one is an order of magnitude slower.
    return np.unique(keys, return_counts=True)[0]


def _dense_grid(
    field: Field, resolution: int, max_batch_points: int
) -> tuple[np.ndarray, ExtractionStats]:
    start_time = time.perf_counter()
    resolution = _check_resolution(resolution)
    sampler = _FieldSampler(field, resolution, max_batch_points)
    values = np.empty((resolution,) * 3, dtype=np.float32)
    flat = values.reshape(-1)
    for begin in range(0, flat.size, sampler.batch):
        linear = np.arange(begin, min(begin + sampler.batch, flat.size))
        indices = np.stack(np.unravel_index(linear, values.shape), axis=1)
        flat[linear] = sampler(indices)
    stats = ExtractionStats(
        method="dense",
        resolution=resolution,
        evaluations=sampler.evaluations,
        field_calls=sampler.calls,
        seconds=time.perf_counter() - start_time,
        evaluations_per_level={1: sampler.evaluations},
    )
    return values, stats


def _coarse_stride(resolution: int, coarse_resolution: int | None) -> int:
    if coarse_resolution is None:
        coarse_resolution = DEFAULT_COARSE_RESOLUTION
    if int(coarse_resolution) != coarse_resolution or coarse_resolution < 1:
        raise ValueError(f"coarse_resolution must be a positive integer; got {coarse_resolution!r}")
    stride = 1
    while 2 * stride * coarse_resolution <= resolution:
        stride *= 2
    return stride


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2; got {resolution!r}")
    return int(resolution)


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(
            f"level must be strictly between 0 and 1 (occupancy 1 inside, 0 outside); got {level!r}"
        )
    return float(level)


def _check_bounds(bounds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if bounds is None:
        return np.full(3, -0.5), np.full(3, 0.5)
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.shape != (2, 3) or not np.all(bounds[1] > bounds[0]):
        raise ValueError(
            "bounds must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min on every "
            f"axis; got {bounds.tolist()}"
        )
    return bounds[0], bounds[1]
