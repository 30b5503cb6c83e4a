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
where the surface is, by following it:

1. The grid is padded by one "outside" point on every side (the padding marching cubes sees too),
   and a coarse lattice of every ``stride``-th padded index (plus the last one) is evaluated, so any
   R works.
2. Seeds: on every coarse edge whose two ends lie on different sides of ``level`` (above it, or
   not), bisection finds one grid edge of unit length whose ends differ: ceil(log2(stride))
   evaluations.
3. Tracking: every grid cell whose evaluated corners lie on different sides gets all 8 corners
   evaluated, until no such cell is left. Starting from the seeds this walks over every cell the
   surface crosses that is connected to a seed -- along a thin leg or slat that the coarse lattice
   stepped over -- and evaluates nothing else: past the coarse lattice and the bisection, every
   evaluation is a corner of a cell the surface crosses (the "floor" any exact sampler needs).
4. Fill: every unevaluated point takes the value of the nearest evaluated point before it along z.
   Two neighbouring points on different sides make every cell around their edge crossed, and those
   cells were all evaluated, so a run of unevaluated points lies on one side. Where the evaluated
   points at the two ends of a run disagree anyway, the tracking missed a surface between them:
   the run is evaluated, followed from there, and the fill repeated.
5. Optionally a second, lower ``gap_level`` (say ``level / 2``) is followed too, so the tracking
   crosses narrow gaps where the field dips below ``level`` without falling to 0: a decoder may draw
   a thin leg as dashes, and then the dashes beyond the first gap are found too. This traces a
   second surface, so it costs up to twice the evaluations for a soft field.

Result: every grid cell of a found surface has all 8 corners evaluated, so the occupancy
(``values > level``) and the marching-cubes mesh equal the dense ones, except for surfaces no seed
leads to: detached pieces of inside (or outside, such as an enclosed cavity) that contain no coarse
lattice point, and -- rarer -- nested pieces whose every coarse edge crosses an even number of
surfaces or whose crossing the bisection passed over. Parts attached to something the coarse
lattice sees are found at any coarse spacing; raise ``coarse_resolution`` to catch small detached
ones, or use :func:`certified_grid`, which cannot miss anything.

Certified sampling
------------------
:func:`certified_grid` is for fields that can bound themselves over a box (range analysis: Sharp and
Jacobson, "Spelunking the Deep", SIGGRAPH 2022; for decoders see ``imnet.bounds``). Starting from the
whole grid, each box of grid points is bounded over its points and their neighbours: a box whose
bound lies above the level is inside, below it outside, and no cell with a corner in it can be
crossed by the surface, so none of its points is evaluated. Other boxes are split in eight, down to
``leaf_size``; in a leaf, smaller sub-boxes are bounded where that pays, and the points no bound
decides are evaluated. Last, certified points next to a point on the other side (corners of crossed
cells, whose values marching cubes interpolates) are evaluated. The occupancy equals dense sampling's
at every point, by construction: nothing is ever inferred from samples, so no part can be missed. A
bound costs several evaluations (``field.bound_cost``) and is loose near the surface, so this costs
more than coarse-to-fine on the decoders we train (bench/results/extract*.json).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Callable
from typing import Protocol

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
    "certified_grid",
    "floor_points",
    "grid_to_mesh",
    "extract_mesh",
]

Field = Callable[[np.ndarray], np.ndarray]


class BoundedField(Protocol):
    """A field that can bound itself over boxes (see :func:`certified_grid`)."""

    def __call__(self, points: np.ndarray) -> np.ndarray: ...

    def bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


DEFAULT_MAX_BATCH_POINTS = 32768
"""Points per field call: an IM-NET decoder's widest layer (2048) then holds 256 MiB of float32.
The one default of the project: every config and program takes it from here."""

DEFAULT_COARSE_RESOLUTION = 32
"""Cells per axis of the first lattice. Occupancy Networks' MISE starts at 32^3 too."""

DEFAULT_LEAF_SIZE = 16
"""Boxes of this many grid points per axis that no bound certifies are decided point by point (16 measured best of 4, 8, 16 on a trained decoder)."""

_SUB_BOX_GAIN = 3.0
"""Inside a leaf, a sub-box is bounded when its undecided points exceed this many times the cost
of a bound (so the bound pays even if it decides only half of them)."""

METHODS = ("auto", "certified", "coarse_to_fine", "dense")

MAX_RESOLUTION = 1024
"""Grids are held in memory: a 1024^3 float32 grid is 4 GiB."""

# Leaves per chunk when testing their points one by one.
_LEAF_CHUNK = 1024

# Grid elements per chunk when filling unevaluated points, to keep temporaries small at R = 512.
_FILL_CHUNK_ELEMENTS = 1 << 22

# Offsets of a cell's 8 corners, [8, 3].
_CORNERS = np.indices((2, 2, 2)).reshape(3, -1).T


@dataclasses.dataclass
class ExtractionStats:
    """What sampling a field on a grid cost.

    Attributes:
        method: "dense", "coarse_to_fine" or "certified".
        resolution: grid resolution R.
        evaluations: points passed to the field in total.
        field_calls: number of calls to the field (batches).
        seconds: wall time of the sampling (field calls included, marching cubes not).
        tracking_rounds: coarse-to-fine: rounds of surface tracking that evaluated something.
        bound_evaluations: boxes bounded by the field's ``bounds`` (certified method).
        bound_cost: what one box's bound costs, in field evaluations (the field's ``bound_cost``).
        certified_points: grid points whose side was decided by bounds, without evaluation.
        boxes_certified_free: boxes certified from their parent's affine bound, with no field call.
        bound_evaluations_per_size: box size (grid points per axis) -> boxes bounded at that size.
        evaluations_per_stage: dense: "dense"; coarse-to-fine: "coarse" (the first lattice), "seeds"
            (bisection), "surface" (tracking) and "repair" (runs the fill found inconsistent); certified:
            "uncertain" (points of the finest boxes whose side no bound decided) and "surface"
            (certified points next to the other side, whose values marching cubes needs).
    """

    method: str
    resolution: int
    evaluations: int
    field_calls: int
    seconds: float
    tracking_rounds: int = 0
    bound_evaluations: int = 0
    bound_cost: float = 0.0
    certified_points: int = 0
    boxes_certified_free: int = 0
    bound_evaluations_per_size: dict[int, int] = dataclasses.field(default_factory=dict)
    evaluations_per_stage: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def evaluation_units(self) -> float:
        """Evaluations plus bound evaluations at their cost, in field-evaluation units."""
        return self.evaluations + self.bound_cost * self.bound_evaluations

    @property
    def reduction(self) -> float:
        """How many times fewer evaluation units than the dense grid (R^3) this took."""
        return self.resolution**3 / max(self.evaluation_units, 1)


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
    :func:`dense_grid`'s except for surfaces no seed leads to (detached pieces that hold no coarse
    lattice point); at every point where the surface is, the values are the field's own, so
    marching cubes gives the dense grid's mesh.

    Args:
        field: callable, float32 points [N, 3] -> occupancy [N] (or [N, 1]) in [0, 1].
        resolution: R >= 2, cells per axis of the result.
        level: iso-level separating inside (> level) from outside, in (0, 1).
        coarse_resolution: about how many points per axis the first lattice has (its stride is
            ``R // coarse_resolution``). Default 32. Higher finds smaller detached parts and costs
            more; ``coarse_resolution >= R`` is dense sampling.
        gap_level: a second, lower level in (0, level) whose crossings are followed too (step 5 of
            the module docstring), e.g. ``level / 2`` to find dashes of thin parts beyond gaps;
            default None: follow only the ``level`` surface.
        max_batch_points: at most this many points per field call.

    Returns:
        values: float32 [R, R, R], indexed [x, y, z]. Evaluated points hold the field's values;
            the others a copy of the nearest evaluated value along z, on the same side.
        stats: evaluations per stage ("coarse", "seeds", "surface", "repair"), tracking rounds,
            field calls, time.

    Memory: one float32 and one bool (R + 2)^3 array (680 MB at R = 512; ``values`` is a view into
    the float32 one) plus work arrays of the size of the surface: a chair at R = 512 peaks at
    0.9 GB (the process, measured).
    """
    start_time = time.perf_counter()
    resolution = _check_resolution(resolution)
    level = _check_level(level)
    if gap_level is not None and not 0.0 < gap_level < level:
        raise ValueError(
            f"gap_level must be None or in (0, level) = (0, {level}); got {gap_level!r}"
        )
    _check_grid_size(resolution)
    stride = _coarse_stride(resolution, coarse_resolution)
    sampler = _FieldSampler(field, resolution, max_batch_points)
    levels = (level,) if gap_level is None else (level, gap_level)
    grid = _TrackedGrid(sampler, resolution, levels)
    stages = {}

    # 1. The coarse lattice, every point.
    coarse = grid.lattice(stride)
    grid.evaluate_lattice(coarse)
    stages["coarse"] = sampler.evaluations
    if stride > 1:  # with stride 1 the coarse lattice is the whole grid
        # 2. Seeds: one sign change of unit length on every coarse edge whose ends disagree,
        # found by bisection.
        seeds = [np.zeros((0, 3), dtype=np.int64)]
        for each_level in levels:
            seeds += grid.bisect(*grid.mixed_edges(coarse, each_level), each_level)
        stages["seeds"] = sampler.evaluations - stages["coarse"]
        # 3. Follow the surface from the seeds, cell by cell, on the full grid.
        grid.track(np.concatenate(seeds))
        stages["surface"] = sampler.evaluations - stages["coarse"] - stages["seeds"]
        # 4. Unevaluated points take their side from their neighbours along z; where the two
        # directions disagree, a surface lies between that tracking did not reach: evaluate the
        # points in between, follow it from there, and fill again.
        stages["repair"] = 0
        while len(disagree := grid.fill()):
            before = sampler.evaluations
            grid.track(grid.evaluate(disagree))
            stages["repair"] += sampler.evaluations - before

    stats = ExtractionStats(
        method="coarse_to_fine",
        resolution=resolution,
        evaluations=sampler.evaluations,
        field_calls=sampler.calls,
        seconds=time.perf_counter() - start_time,
        tracking_rounds=grid.rounds,
        evaluations_per_stage=stages,
    )
    return grid.interior, stats


def certified_grid(
    field: BoundedField,
    resolution: int,
    *,
    level: float = 0.5,
    leaf_size: int | None = None,
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS,
) -> tuple[np.ndarray, ExtractionStats]:
    """Sample a field that can bound itself over boxes: exactly :func:`dense_grid`'s occupancy.

    See the module docstring ("Certified sampling"). Thresholded at ``level`` the result equals
    ``dense_grid(field, resolution) > level`` at every point, by construction, at any R; every point
    of a cell the surface crosses holds the field's own value, so marching cubes gives the dense
    grid's mesh. Detached parts of any size are found: a box that contains one cannot be certified.

    (For a decoder, "equals" holds up to its own float32 rounding, which can differ in the last
    bit with the batch a point is evaluated in, for dense sampling as for this.)

    Args:
        field: callable points [N, 3] -> values [N], with ``field.bounds(low, high) -> (lower,
            upper)``: for boxes low [K, 3] <= x <= high [K, 3] (float64), bounds [K] of the field's
            value at every point of each box (including the float32 points the field is called
            with). Optionally ``field.affine_bounds(low, high, level)`` (affine forms, see
            ``imnet.bounds.AffineForms``, of a function whose sign is the side of ``level``: > 0
            means above it, < 0 at or below it) and ``field.bound_cost`` (evaluations that one
            box's bound costs; default 1).
        resolution: R >= 2, cells per axis.
        level: iso-level in (0, 1).
        leaf_size: boxes of this many grid points per axis (a power of two, default 16) that no
            bound certifies are decided point by point.
        max_batch_points: at most this many points per field call.

    Returns:
        values: float32 [R, R, R]; evaluated points hold the field's values, certified ones 1.0
            (inside) or 0.0 (outside).
        stats: evaluations, bound evaluations and their cost, certified points, time.
    """
    start_time = time.perf_counter()
    resolution = _check_resolution(resolution)
    level = _check_level(level)
    _check_grid_size(resolution)
    bounder = _BoxBounder(field, resolution, level)
    leaf = _check_leaf_size(leaf_size)
    sampler = _FieldSampler(field, resolution, max_batch_points)
    sampling = _CertifiedSampling(sampler, bounder, resolution, level, leaf)
    values = sampling.dense_values()
    stats = ExtractionStats(
        method="certified",
        resolution=resolution,
        evaluations=sampler.evaluations,
        field_calls=sampler.calls,
        seconds=time.perf_counter() - start_time,
        bound_evaluations=bounder.boxes,
        bound_cost=bounder.cost,
        certified_points=resolution**3 - sampler.evaluations,
        boxes_certified_free=sampling.free,
        bound_evaluations_per_size=dict(bounder.boxes_per_size),
        evaluations_per_stage=dict(sampling.evaluations_per_stage),
    )
    return values, stats


def floor_points(occupied: np.ndarray) -> np.ndarray:
    """The grid points any exact sampler must evaluate: every corner of a cell the surface crosses.

    Args:
        occupied: bool [X, Y, Z], the thresholded grid (padding beyond it counts as outside, as in
            marching cubes).

    Returns:
        bool [X, Y, Z]; its sum is the "floor" that sampling schemes are compared with.
    """
    cells = np.lib.stride_tricks.sliding_window_view(np.pad(occupied, 1), (2, 2, 2))
    crossed = cells.any(axis=(-3, -2, -1)) & ~cells.all(axis=(-3, -2, -1))
    corner = np.zeros(np.array(occupied.shape) + 2, dtype=bool)
    for dx, dy, dz in np.ndindex(2, 2, 2):
        corner[dx : dx + crossed.shape[0], dy : dy + crossed.shape[1], dz : dz + crossed.shape[2]] |= crossed
    return corner[1:-1, 1:-1, 1:-1]


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
    method: str = "auto",
    coarse_resolution: int | None = None,
    gap_level: float | None = None,
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS,
) -> tuple[trimesh.Trimesh, ExtractionStats]:
    """Field -> grid -> mesh in one call.

    Args:
        field: callable, float32 points [N, 3] in [-0.5, 0.5]^3 -> occupancy [N] (or [N, 1]).
        resolution: R >= 2, grid cells per axis.
        level: iso-level in (0, 1).
        method: "auto" (= "coarse_to_fine": on the decoders we train, certified costs 4-40x its
            wall time, see bench/results/extract_paper_decoder.json and the README),
            "certified" (:func:`certified_grid`), "coarse_to_fine" (:func:`coarse_to_fine_grid`)
            or "dense" (:func:`dense_grid`).
        coarse_resolution, gap_level: see :func:`coarse_to_fine_grid`; used by "coarse_to_fine" only.
        max_batch_points: at most this many points per field call.

    Returns:
        mesh: closed mesh in object space with outward normals (see :func:`grid_to_mesh`); empty,
            with a warning, when the field exceeds ``level`` nowhere on the grid.
        stats: evaluation counts and sampling time.
    """
    level = _check_level(level)  # before sampling, which may take minutes
    if method == "auto":
        method = "coarse_to_fine"
    if method == "certified":
        values, stats = certified_grid(field, resolution, level=level, max_batch_points=max_batch_points)
    elif method == "coarse_to_fine":
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
        raise ValueError(f'method must be one of {", ".join(METHODS)}; got {method!r}')
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


class _TrackedGrid:
    """The state of coarse-to-fine sampling, on the grid padded by one outside point per side.

    Points are named by padded indices u = i + 1 [3] (u = 0 and u = R + 1 are the padding: value 0,
    counted as evaluated) or by their flat index ("key") in the padded [R + 2]^3 arrays; a cell is
    named by its lowest corner. ``levels`` are the level and, if given, the gap level; a point's
    "side" is how many of them its value exceeds.
    """

    def __init__(self, sampler: _FieldSampler, resolution: int, levels: tuple[float, ...]):
        self.sample = sampler
        self.levels = levels
        size = resolution + 2
        self.values = np.zeros((size,) * 3, dtype=np.float32)
        self.evaluated = np.ones((size,) * 3, dtype=bool)
        self.evaluated[1:-1, 1:-1, 1:-1] = False
        self.rounds = 0

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

    def mixed_edges(self, lattice: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Edges of the evaluated ``lattice`` whose two ends lie on different sides of ``level``:
        (low end [E, 3], high end [E, 3]) in padded indices."""
        above = self.values[np.ix_(lattice, lattice, lattice)] > level
        low, high = [], []
        for axis in range(3):
            step = np.zeros(3, dtype=np.int64)
            step[axis] = 1
            n = np.array(above.shape) - step
            cells = np.argwhere(above[: n[0], : n[1], : n[2]] != above[step[0] :, step[1] :, step[2] :])
            low.append(lattice[cells])
            high.append(lattice[cells + step])
        return np.concatenate(low), np.concatenate(high)

    def bisect(self, low: np.ndarray, high: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Halve each edge low [E, 3] -> high [E, 3] (ends on different sides of ``level``, along
        one axis) until it is one grid step long; return those unit edges' low ends [E, 3] and
        high ends, evaluating the midpoints on the way."""
        low, high = low.copy(), high.copy()
        while True:
            long = np.flatnonzero((high - low).sum(axis=1) > 1)
            if not len(long):
                return low, high
            middle = (low[long] + high[long]) // 2
            self.evaluate(middle)
            same = (self.values[tuple(middle.T)] > level) == (self.values[tuple(low[long].T)] > level)
            low[long[same]] = middle[same]
            high[long[~same]] = middle[~same]

    def track(self, points: np.ndarray) -> None:
        """Follow the surface from the evaluated ``points`` [M, 3]: every cell with evaluated corners
        on different sides gets all its corners evaluated, until no such cell is left."""
        frontier = self._cells_touching(points)
        while len(frontier):
            keys = frontier[:, None, :] + _CORNERS  # [K, 8, 3]
            keys = np.ravel_multi_index(np.moveaxis(keys, -1, 0), self.values.shape)
            known = np.take(self.evaluated, keys)
            values = np.take(self.values, keys)
            low = np.where(known, values, np.inf).min(axis=1)
            high = np.where(known, values, -np.inf).max(axis=1)
            open_ = self._straddles(low, high) & ~known.all(axis=1)
            if not open_.any():
                return
            self.rounds += 1
            frontier = self._cells_touching(self._evaluate_new(keys[open_]))

    def fill(self) -> np.ndarray:
        """Give every unevaluated point the value of the nearest evaluated point before it along
        z. Returns the padded indices [M, 3] of the unevaluated points where that disagrees with the
        nearest evaluated point after it (a surface the tracking did not reach lies between them):
        empty when the fill is complete.

        Why this is right: two neighbouring points on different sides make every cell around their
        edge crossed, and tracking evaluates all corners of crossed cells it reaches; so along z, a
        run of unevaluated points lies on one side, the side of the evaluated points at its ends.
        """
        size = len(self.values)
        rows = max(1, _FILL_CHUNK_ELEMENTS // size**2)
        position = np.arange(size, dtype=np.int32)
        disagree = []
        for begin in range(0, size, rows):
            x = slice(begin, begin + rows)
            evaluated, values = self.evaluated[x], self.values[x]
            before = np.maximum.accumulate(np.where(evaluated, position, 0), axis=2)
            after = np.flip(np.minimum.accumulate(np.flip(np.where(evaluated, position, size - 1), axis=2), axis=2), axis=2)
            from_before = np.take_along_axis(values, before, axis=2)
            from_after = np.take_along_axis(values, after, axis=2)
            wrong = ~evaluated & (self._side(from_before) != self._side(from_after))
            disagree.append(np.argwhere(wrong) + [begin, 0, 0])
            np.copyto(values, from_before, where=~evaluated)
        return np.concatenate(disagree)

    def evaluate(self, padded: np.ndarray) -> np.ndarray:
        """Evaluate the not yet evaluated points among ``padded`` [M, 3]; returns them."""
        return self._evaluate_new(np.ravel_multi_index(padded.T, self.values.shape))

    def _side(self, values: np.ndarray) -> np.ndarray:
        side = np.zeros(values.shape, dtype=np.int8)
        for level in self.levels:
            side += values > level
        return side

    def _straddles(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Whether cells with corner values in [low, high] straddle a level."""
        straddles = np.zeros(low.shape, dtype=bool)
        for level in self.levels:
            straddles |= (high > level) & (low <= level)
        return straddles

    def _evaluate_new(self, keys: np.ndarray) -> np.ndarray:
        """Evaluate the not yet evaluated points among ``keys``; returns their padded indices [M, 3]."""
        keys = _unique(keys.reshape(-1))
        keys = keys[~np.take(self.evaluated, keys)]
        padded = np.stack(np.unravel_index(keys, self.values.shape), axis=1)
        if len(padded):
            self._evaluate(padded)
        return padded

    def _evaluate(self, padded: np.ndarray) -> None:
        """Evaluate the points ``padded`` [M, 3]."""
        index = tuple(padded.T)
        self.values[index] = self.sample(padded - 1)
        self.evaluated[index] = True

    def _cells_touching(self, padded: np.ndarray) -> np.ndarray:
        """Cells [K, 3] with one of the points ``padded`` [M, 3] as a corner."""
        cells = (padded[:, None, :] - _CORNERS).reshape(-1, 3)
        cells = cells[np.all((cells >= 0) & (cells < len(self.values) - 1), axis=1)]
        return _unique_rows(cells)


class _BoxBounder:
    """Bounds of a field over boxes of grid points, as "g" ranges: g > 0 above the level, g < 0
    at or below it. Counts the boxes bounded (per box size) and knows their cost."""

    def __init__(self, field: BoundedField, resolution: int, level: float):
        if not callable(getattr(field, "bounds", None)):
            raise TypeError(
                f"certified extraction needs a field with a bounds(low, high) method (range bounds "
                f"over boxes); {type(field).__name__} has none. Use method='coarse_to_fine' or 'dense'."
            )
        self.field = field
        self.resolution = resolution
        self.level = level
        self.affine = callable(getattr(field, "affine_bounds", None))
        self.cost = float(getattr(field, "bound_cost", 1.0))
        self.boxes = 0
        self.boxes_per_size: dict[int, int] = {}

    def points(self, indices: np.ndarray) -> np.ndarray:
        """Grid indices [M, 3] -> the float32 points the field is called with, as float64."""
        return ((indices + 0.5) / self.resolution - 0.5).astype(np.float32).astype(np.float64)

    def __call__(self, low: np.ndarray, high: np.ndarray, size: int):
        """g bounds over the boxes of grid points low [K, 3] ..= high [K, 3] (inclusive).

        Returns (g_low [K], g_high [K], forms): forms are affine (for free tests of sub-boxes and
        points) when the field gives them, else None.
        """
        self.boxes += len(low)
        self.boxes_per_size[size] = self.boxes_per_size.get(size, 0) + len(low)
        low, high = self.points(low), self.points(high)
        if self.affine:
            forms = self.field.affine_bounds(low, high, self.level)
            g_low, g_high = forms.bounds()
            return g_low, g_high, forms
        lower, upper = (np.asarray(b, dtype=np.float64) for b in self.field.bounds(low, high))
        if lower.shape != (len(low),) or upper.shape != (len(low),):
            raise ValueError(
                f"field.bounds returned shapes {lower.shape} and {upper.shape} for {len(low)} boxes; "
                f"it must return (lower, upper), each of shape ({len(low)},)"
            )
        if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)) and np.all(lower <= upper)):
            raise ValueError("field.bounds must return finite bounds with lower <= upper")
        return lower - self.level, upper - self.level, None


class _CertifiedSampling:
    """Certified sampling state: certified inside boxes, and the finest open boxes ("leaves")
    with one state per point.

    Boxes are sets of grid points: box (lo, s) holds the points lo .. min(lo + s, R) - 1 on every
    axis, s a power of two, lo a multiple of s. A box is bounded over its points *and their
    neighbours* (its "hull", lo - 1 .. lo + s, clipped to the grid): if the hull is certified on
    one side, no cell with a corner in the box is crossed by the surface, so no point of the box is
    ever needed by marching cubes. Inside is certified only for boxes whose hull stays within the
    grid, because the points next to the outside padding are needed.
    """

    OUT, IN, EVALUATED, ABSENT = 0, 1, 2, 3  # per-point states in leaves (ABSENT: beyond R)

    def __init__(self, sampler: _FieldSampler, bounder: _BoxBounder, resolution: int, level: float, leaf: int):
        self.sample = sampler
        self.bound = bounder
        self.resolution = resolution
        self.level = level
        self.leaf = leaf
        self.free = 0
        self.inside: list[tuple[np.ndarray, int]] = []  # (lo [B, 3], size) of certified inside boxes
        self.evaluations_per_stage = {"uncertain": 0, "surface": 0}
        leaves, forms, form_index = self._subdivide()
        self.leaf_lo = leaves
        self.states, self.values = self._decide_leaf_points(leaves, forms, form_index)
        self._evaluate_surface()

    def _subdivide(self):
        """Bound boxes coarse to fine; return the leaves no bound could certify, with their forms."""
        R, size = self.resolution, self.leaf
        while size < R:
            size *= 2
        lo = np.zeros((1, 3), dtype=np.int64)
        children = _CORNERS.astype(np.int64)
        while True:
            hull_low, hull_high = np.maximum(lo - 1, 0), np.minimum(lo + size, R - 1)
            g_low, g_high, forms = self.bound(hull_low, hull_high, size)
            open_ = self._certify(lo, size, g_low, g_high)
            if size == self.leaf:
                return lo[open_], forms, np.flatnonzero(open_)
            parent = np.repeat(np.flatnonzero(open_), 8)
            lo = (lo[open_][:, None, :] + children * (size // 2)).reshape(-1, 3)
            keep = np.all(lo < R, axis=1)
            lo, parent, size = lo[keep], parent[keep], size // 2
            if forms is not None and len(lo):
                # The parent's affine form bounds its sub-boxes too, for free.
                hull_low, hull_high = np.maximum(lo - 1, 0), np.minimum(lo + size, R - 1)
                g_low, g_high = forms.over_boxes(parent, self.bound.points(hull_low), self.bound.points(hull_high))
                open_ = self._certify(lo, size, g_low, g_high)
                self.free += int((~open_).sum())
                lo = lo[open_]
            if not len(lo):
                return lo, None, np.zeros(0, dtype=np.int64)

    def _certify(self, lo: np.ndarray, size: int, g_low: np.ndarray, g_high: np.ndarray) -> np.ndarray:
        """Record the boxes certified inside (outside needs no record); return the open ones."""
        interior = np.all((lo >= 1) & (lo + size <= self.resolution - 1), axis=1)
        inside = (g_low > 0) & interior
        if inside.any():
            self.inside.append((lo[inside], size))
        return ~(inside | (g_high < 0))

    def _decide_leaf_points(self, leaves: np.ndarray, forms, form_index: np.ndarray):
        """Per-point states of the leaves: certified by bounds where possible, else evaluated.

        Each point starts with the bound its leaf's affine form gives it (none for constant bounds).
        Then, for sub-boxes of half, a quarter, ... of the leaf's size: a sub-box whose undecided
        points outnumber ``_SUB_BOX_GAIN`` times a bound's cost is bounded itself (over its own
        points only: the surface step below handles the neighbours), and its points keep the
        tighter of their bounds. What no bound decides is evaluated.
        """
        b, R = self.leaf, self.resolution
        offsets = np.stack(np.unravel_index(np.arange(b**3), (b, b, b)), axis=1)
        states = np.full((len(leaves), b**3), self.EVALUATED, dtype=np.int8)
        values = np.zeros((len(leaves), b**3), dtype=np.float32)
        for begin in range(0, len(leaves), _LEAF_CHUNK):
            chunk = slice(begin, begin + _LEAF_CHUNK)
            index = leaves[chunk][:, None, :] + offsets  # [L, b^3, 3]
            present = np.all(index < R, axis=2)
            leaf_of = np.broadcast_to(np.arange(len(index))[:, None], present.shape)[present]
            point_index = index[present]
            g_low, g_high = np.full(len(leaf_of), -np.inf), np.full(len(leaf_of), np.inf)
            if forms is not None:
                points = self.bound.points(point_index)
                g_low, g_high = forms.over_boxes(form_index[chunk][leaf_of], points, points)
            size = b // 2
            while size >= 1:
                undecided = np.flatnonzero((g_low <= 0) & (g_high >= 0))
                sub_lo = point_index[undecided] // size * size
                key, inverse, count = np.unique(
                    np.ravel_multi_index(sub_lo.T, (R + size,) * 3), return_inverse=True, return_counts=True
                )
                worth = count > _SUB_BOX_GAIN * self.bound.cost
                if worth.any():
                    lo = np.stack(np.unravel_index(key[worth], (R + size,) * 3), axis=1)
                    hull_high = np.minimum(lo + size, R) - 1
                    box_low, box_high, box_forms = self.bound(lo, hull_high, size)
                    box = np.cumsum(worth) - 1  # sub-box number of each key, among the bounded
                    mine = worth[inverse]
                    which, points = undecided[mine], point_index[undecided[mine]]
                    if box_forms is not None:
                        coords = self.bound.points(points)
                        low, high = box_forms.over_boxes(box[inverse[mine]], coords, coords)
                    else:
                        low, high = box_low[box[inverse[mine]]], box_high[box[inverse[mine]]]
                    g_low[which] = np.maximum(g_low[which], low)
                    g_high[which] = np.minimum(g_high[which], high)
                size //= 2
            decided = np.full(len(leaf_of), self.EVALUATED, dtype=np.int8)
            decided[g_high < 0] = self.OUT
            decided[g_low > 0] = self.IN
            state = states[chunk]
            state[~present] = self.ABSENT
            state[present] = decided
            todo = state == self.EVALUATED
            values[chunk][todo] = self.sample(index[todo])
            self.evaluations_per_stage["uncertain"] += int(todo.sum())
        values[states == self.IN] = 1.0
        return states.reshape(-1, b, b, b), values.reshape(-1, b, b, b)

    def _evaluate_surface(self) -> None:
        """Evaluate the certified leaf points that have a neighbour on the other side.

        Those are corners of cells the surface crosses, whose values marching cubes interpolates.
        Neighbours outside the leaves lie in certified boxes whose hull holds the leaf point, so they
        are on its side and can be ignored; beyond the grid is the outside padding.
        """
        if not len(self.leaf_lo):
            return
        above, at_or_below = self._windows()
        b = self.leaf
        near_above = np.zeros((len(self.leaf_lo), b, b, b), dtype=bool)
        near_below = np.zeros_like(near_above)
        for dx, dy, dz in np.ndindex(3, 3, 3):
            near_above |= above[:, dx : dx + b, dy : dy + b, dz : dz + b]
            near_below |= at_or_below[:, dx : dx + b, dy : dy + b, dz : dz + b]
        todo = ((self.states == self.IN) & near_below) | ((self.states == self.OUT) & near_above)
        leaf, x, y, z = np.nonzero(todo)
        self.values[leaf, x, y, z] = self.sample(self.leaf_lo[leaf] + np.stack([x, y, z], axis=1))
        self.states[leaf, x, y, z] = self.EVALUATED
        self.evaluations_per_stage["surface"] += len(leaf)

    def _windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Side flags of every leaf with a one-point border from its 26 neighbours: above the level,
        and at or below it (padding counts as below; points in certified boxes as neither)."""
        b, R, lo = self.leaf, self.resolution, self.leaf_lo
        evaluated = self.states == self.EVALUATED
        above = (self.states == self.IN) | (evaluated & (self.values > self.level))
        below = (self.states == self.OUT) | (self.states == self.ABSENT) | (evaluated & (self.values <= self.level))
        n = -(-R // b) + 2  # leaf grid, with one more leaf on every side for the neighbour lookup
        keys = np.ravel_multi_index((lo // b + 1).T, (n, n, n))
        order = np.argsort(keys)
        sorted_keys = keys[order]
        windows = np.zeros((2, len(lo), b + 2, b + 2, b + 2), dtype=bool)
        # Window slab per neighbour offset d along an axis: d = -1 -> last layer, 0 -> all, +1 -> first.
        source = {-1: slice(b - 1, b), 0: slice(0, b), 1: slice(0, 1)}
        target = {-1: slice(0, 1), 0: slice(1, b + 1), 1: slice(b + 1, b + 2)}
        for d in itertools.product((-1, 0, 1), repeat=3):
            neighbour_lo = lo + np.asarray(d) * b
            outside_grid = np.any((neighbour_lo < 0) | (neighbour_lo >= R), axis=1)
            key = np.ravel_multi_index((neighbour_lo // b + 1).T, (n, n, n))
            position = np.minimum(np.searchsorted(sorted_keys, key), len(keys) - 1)
            found = sorted_keys[position] == key
            neighbour = order[position]
            src = (slice(None),) + tuple(source[a] for a in d)
            dst = (slice(None),) + tuple(target[a] for a in d)
            for w, flags in enumerate((above, below)):
                slab = windows[w][dst]
                slab[found] = flags[neighbour[found]][src]
                if w == 1:
                    slab[outside_grid] = True  # the padding: outside
                windows[w][dst] = slab
        return windows[0], windows[1]

    def dense_values(self) -> np.ndarray:
        """float32 [R, R, R]: certified inside 1.0, outside 0.0, evaluated points their values."""
        R, b = self.resolution, self.leaf
        values = np.zeros((R, R, R), dtype=np.float32)
        for lows, size in self.inside:
            for x, y, z in lows:
                values[x : x + size, y : y + size, z : z + size] = 1.0
        for (x, y, z), block in zip(self.leaf_lo, self.values):
            target = values[x : x + b, y : y + b, z : z + b]
            target[...] = block[: target.shape[0], : target.shape[1], : target.shape[2]]
        return values


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
    _check_grid_size(resolution)
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
        evaluations_per_stage={"dense": sampler.evaluations},
    )
    return values, stats


def _coarse_stride(resolution: int, coarse_resolution: int | None) -> int:
    if coarse_resolution is None:
        coarse_resolution = DEFAULT_COARSE_RESOLUTION
    if isinstance(coarse_resolution, bool) or int(coarse_resolution) != coarse_resolution or coarse_resolution < 1:
        raise ValueError(f"coarse_resolution must be a positive integer; got {coarse_resolution!r}")
    return max(1, resolution // int(coarse_resolution))


def _check_leaf_size(leaf_size: int | None) -> int:
    if leaf_size is None:
        return DEFAULT_LEAF_SIZE
    if isinstance(leaf_size, bool) or int(leaf_size) != leaf_size or leaf_size < 1 or leaf_size & (leaf_size - 1):
        raise ValueError(f"leaf_size must be a power of two (1, 2, 4, 8, ...); got {leaf_size!r}")
    return int(leaf_size)


def _check_grid_size(resolution: int) -> None:
    if resolution > MAX_RESOLUTION:
        raise ValueError(
            f"resolution {resolution} is above the limit of {MAX_RESOLUTION}: the {resolution}^3 grid "
            f"would need {4 * resolution**3 / 2**30:,.0f} GiB of float32 in memory, and its mesh about "
            f"{resolution**2 * 2:,} triangles per unit of surface area; use at most {MAX_RESOLUTION}"
        )


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
