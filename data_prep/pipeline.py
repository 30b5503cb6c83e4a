"""The data-prep pipeline: shape source -> mesh in ShapeNet v2's axes, normalised (`imnet.mesh`) ->
256^3 solid voxels -> IM-NET point samples -> 24 views -> one record file per shape -> HDF5 files
per category and split.

Fault tolerance: each shape's result is written to its own record file (atomically), so an
interrupted run loses at most the shapes in flight and a rerun skips what is done. A shape that
fails (unreadable, empty, degenerate, NaN vertices, too large) is logged with its reason in
`failures.csv` and skipped. The final HDF5 files are assembled from the records at the end, also
atomically, so they are never half-written. Options and the output folder are checked before any
work (`check_config`); workers exit by themselves when the main process is killed.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import trimesh

from data_prep.sources import R2N2_VIEWS, ShapeSource, read_r2n2_cameras
from imnet import datafile
from imnet.atomic import check_output_dir
from imnet.binvox import binvox_bounds, read_binvox
from imnet.config import DataPrepConfig
from imnet.mesh import (
    SHAPENET_FRONT,
    SHAPENET_UP,
    MeshError,
    axes_rotation,
    load_mesh,
    normalisation,
    normalise,
    to_shapenet_axes,
)
from imnet.progress import progress
from imnet.sampling import GRID, downsample_voxels, lattice_occupancy, sample_points
from imnet.voxelize import voxelize_solid

RECORDS_DIR = "shapes"  # per-shape results, one file each: <out>/shapes/<category>/<model_id>.npz
FAILURES_FILE = "failures.csv"


class ShapeError(ValueError):
    """A shape that cannot be prepared; its message goes to failures.csv."""


# --- one shape -----------------------------------------------------------------------------------


def turn_binvox(
    voxels: np.ndarray, translate: np.ndarray, scale: float, up: str, front: str
) -> tuple[np.ndarray, np.ndarray]:
    """A binvox grid in a source frame with axes ``up``/``front`` turned into ShapeNet v2's, exactly.

    The turn (`imnet.mesh.axes_rotation`) is a signed permutation of the axes, so the grid is
    transposed and flipped, and its box moved to match: no resampling.
    """
    rotation = axes_rotation(up, front)
    source_axis = np.abs(rotation).argmax(axis=1)  # target axis j comes from source axis source_axis[j]
    sign = rotation[np.arange(3), source_axis]
    turned = np.flip(voxels.transpose(source_axis), axis=[j for j in range(3) if sign[j] < 0])
    low = np.array([translate[i] if s > 0 else -(translate[i] + scale) for i, s in zip(source_axis, sign)])
    return np.ascontiguousarray(turned), low


def solid_from_binvox(
    path: str | Path, resolution: int, up: str = SHAPENET_UP, front: str = SHAPENET_FRONT
) -> tuple[np.ndarray, np.ndarray, float]:
    """A binvox solid resampled (nearest voxel) onto the normalised `resolution`^3 grid.

    Returns (solid bool [R, R, R], centre [3], scale) in the same normalisation as meshes, using the
    bounding box of the occupied voxels, after turning the grid from the source's axes (e.g.
    ShapeNetVox32's, up "+y", front "+x") into ShapeNet v2's.
    """
    voxels, translate, scale = read_binvox(path)
    voxels, translate = turn_binvox(voxels, translate, scale, up, front)
    if not voxels.any():
        raise ShapeError("binvox file holds no occupied voxel")
    d = voxels.shape[0]
    box = binvox_bounds(translate, scale)
    occupied = np.argwhere(voxels)
    lo = box[0] + (occupied.min(0) + 0.0) / d * scale  # outer faces of the occupied voxels
    hi = box[0] + (occupied.max(0) + 1.0) / d * scale
    centre, norm_scale = normalisation(np.stack([lo, hi]))
    coords = (np.arange(resolution) + 0.5) / resolution - 0.5
    solid = np.zeros((resolution,) * 3, bool)
    idx = [np.floor(((coords * norm_scale + centre[a]) - box[0, a]) / scale * d).astype(int) for a in range(3)]
    valid = [(i >= 0) & (i < d) for i in idx]
    ix, iy, iz = (np.clip(i, 0, d - 1) for i in idx)
    solid[:] = voxels[np.ix_(ix, iy, iz)] & valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    return solid, centre, norm_scale


def mesh_from_solid(solid: np.ndarray) -> trimesh.Trimesh:
    """A surface for rendering views of a voxel-only shape (marching cubes of the solid)."""
    from imnet.extract import grid_to_mesh

    return grid_to_mesh(solid.astype(np.float32), level=0.5)


def r2n2_views(views_dir: str | Path, n_views: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """3D-R2N2 renderings composited onto white: (uint8 [n_views, size, size], cameras [n_views, 5])."""
    from imnet.images import composite_on_white, load_image

    views = np.empty((n_views, size, size), np.uint8)
    for i in range(n_views):
        path = Path(views_dir) / f"{i:02d}.png"
        if not path.is_file():
            raise ShapeError(f"3D-R2N2 view missing: {path}")
        gray = composite_on_white(load_image(path))
        if gray.shape != (size, size):
            raise ShapeError(f"{path} is {gray.shape[1]}x{gray.shape[0]}, expected {size}x{size}")
        views[i] = np.rint(gray * 255.0).astype(np.uint8)
    return views, read_r2n2_cameras(views_dir, n_views)


@functools.cache
def renderer(size: int):
    """One offscreen renderer per process: creating one costs 0.15-0.2 s of shader compilation."""
    from imnet.render import Renderer

    return Renderer(size)


def shape_seed(name: str, seed: int) -> np.random.Generator:
    """A generator that depends only on the shape's name and the run seed (not on worker order)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def prepare_shape(source: ShapeSource, config: DataPrepConfig) -> dict[str, np.ndarray]:
    """Everything IM-NET stores for one shape, as a record of numpy arrays."""
    rng = shape_seed(source.name, config.seed)
    mesh = None
    if source.kind == "mesh":
        mesh = to_shapenet_axes(load_mesh(source.path, max_faces=config.max_faces), source.up, source.front)
    if mesh is None or (config.voxels_from == "binvox" and source.binvox):
        solid, centre, scale = solid_from_binvox(source.binvox or source.path, GRID, source.up, source.front)
    else:
        centre, scale = normalisation(mesh.bounds)
    _check_float32_normalisation(centre, scale)
    if mesh is not None:
        normalise(mesh, centre, scale)
        if config.voxels_from != "binvox" or not source.binvox:
            solid = voxelize_solid(mesh, GRID, close_gaps=config.close_gaps)
    if not solid.any():
        raise ShapeError("voxelisation is empty (the surface may be too thin or open to enclose anything)")
    record = {
        "name": np.array(source.name),
        "source": np.array(str(source.path)),
        "centre": centre.astype(np.float32),
        "scale": np.float32(scale),
        "up": np.array(source.up),
        "front": np.array(source.front),
        "voxels": downsample_voxels(solid, 64)[..., None].astype(np.uint8),
        **sample_points(solid, rng),
        "occupancy_64": lattice_occupancy(solid, 64),
    }
    if config.render:
        if source.views_dir:
            pixels, cameras = r2n2_views(source.views_dir, config.views, config.view_size)
        else:
            from imnet.render import sample_r2n2_cameras

            cameras = sample_r2n2_cameras(config.views, rng)
            pixels = renderer(config.view_size).views(mesh if mesh is not None else mesh_from_solid(solid), cameras)
        record["pixels"], record["cameras"] = pixels, cameras.astype(np.float32)
    return record


def _check_float32_normalisation(centre: np.ndarray, scale: float) -> None:
    """The data files store centre and scale as float32; refuse a shape whose values do not fit
    (they would read back as inf or 0, and nothing could be mapped back to the source frame)."""
    tiny, top = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    if not (tiny <= scale <= top and np.abs(centre).max() <= top):
        raise ShapeError(
            f"coordinates out of range: the bounding-box diagonal is {scale:.3g} and its centre "
            f"{np.asarray(centre).tolist()}, but data files store them as float32 ({tiny:.2g} to "
            f"{top:.2g}); rescale the mesh"
        )


# --- a whole run ---------------------------------------------------------------------------------


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    outputs: dict[str, int] = field(default_factory=dict)  # HDF5 file -> shapes written into it

    @property
    def wrote_nothing(self) -> bool:
        """No shape of this run has a record, so no data file could be written."""
        return self.done + self.skipped == 0

    def line(self) -> str:
        if self.wrote_nothing:
            where = "; nothing written: no shape could be prepared" if self.failed else "; nothing written"
        else:
            where = f"; wrote {format_outputs(self.outputs)}" if self.outputs else ""
        return (
            f"{self.done} shapes prepared, {self.skipped} already done, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s{where}"
        )


def format_outputs(outputs: dict[str, int]) -> str:
    """'a_train.hdf5 (40 shapes), a_test.hdf5 (10 shapes)': the files and what they hold."""
    return ", ".join(f"{path} ({count} shape{'s' if count != 1 else ''})" for path, count in outputs.items())


def record_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / RECORDS_DIR / f"{name}.npz"


def parse_shard(shard: str) -> tuple[int, int]:
    """'k/n' -> (k, n) with 0 <= k < n."""
    try:
        k, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like k/n (e.g. 0/4), got {shard!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard {shard}: need 0 <= k < n")
    return k, n


def check_config(config: DataPrepConfig) -> None:
    """Every option of a run and its output folder, checked before any work or any folder is made.

    Raises:
        ValueError: a bad option (shard, split file, views, workers) or an output folder that
            cannot be written (`imnet.atomic.check_output_dir`).
    """
    parse_shard(config.shard)
    if config.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {config.workers}")
    if config.render and config.views < 1:
        raise ValueError(f"--views must be at least 1, got {config.views} (use --no-render for no views)")
    if config.split_file:
        read_split_file(config.split_file)
    check_output_dir(config.out_dir, option="--out")


def check_sources(sources: list[ShapeSource], config: DataPrepConfig) -> None:
    """Refuse, before any work, sources that would overwrite each other or lack the views asked for."""
    paths: dict[str, str] = {}
    for s in sources:
        if s.name in paths:
            raise ValueError(f"{paths[s.name]} and {s.path} would both be shape {s.name}; rename one of them")
        paths[s.name] = s.path
    if config.render and config.views > R2N2_VIEWS and any(s.views_dir for s in sources):
        raise ValueError(f"--views {config.views}: 3D-R2N2 rendered {R2N2_VIEWS} views per shape; "
                         f"use --views {R2N2_VIEWS} or fewer with --r2n2")


def _watch_parent(parent: int) -> None:
    """Worker initialiser: exit as soon as the main process is gone.

    A main process killed with SIGKILL cannot stop its pool; without this its workers would go on
    preparing shapes nobody collects, then sit idle holding their memory. Polling the parent's id
    works on every platform (an orphan is adopted by another process).
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _work(source: ShapeSource, config: DataPrepConfig, out_dir: str) -> tuple[str, str]:
    """Worker entry: prepare and store one shape. Returns (name, "" or the failure reason)."""
    try:
        record = prepare_shape(source, config)
        path = record_path(out_dir, source.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        datafile.write_shape_record(path, record)
        return source.name, ""
    except (ShapeError, MeshError) as e:
        return source.name, str(e)
    except Exception as e:  # a bug or a library error on a strange mesh must not end the run
        return source.name, f"{type(e).__name__}: {e}"


def prepare(sources: list[ShapeSource], config: DataPrepConfig, assemble: bool | None = None) -> RunSummary:
    """Prepare `sources` into `config.out_dir`, resuming where an earlier run stopped.

    Shapes are processed by `config.workers` processes; this process only schedules and logs. Unless
    the run is one shard of several (`config.shard`), the HDF5 files are assembled at the end.
    """
    start = time.perf_counter()
    check_config(config)
    check_sources(sources, config)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k, n = parse_shard(config.shard)
    mine = [s for i, s in enumerate(sorted(sources, key=lambda s: s.name)) if i % n == k]
    todo = [s for s in mine if not record_path(out_dir, s.name).is_file()]
    summary = RunSummary(skipped=len(mine) - len(todo))

    with progress(total=len(todo), desc="preparing shapes", unit="shape", disable=not todo) as bar:
        if config.workers <= 1:
            results = (_work(s, config, str(out_dir)) for s in todo)
            for name, error in results:
                _tally(summary, name, error, bar)
        else:
            # spawn, not fork: workers open their own OpenGL context for rendering.
            with ProcessPoolExecutor(config.workers, mp_context=get_context("spawn"),
                                     initializer=_watch_parent, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(_work, s, config, str(out_dir)): s.name for s in todo}
                try:
                    for future in as_completed(futures):
                        _tally(summary, *future.result(), bar)
                except BrokenProcessPool:
                    finished = {name for name, _ in summary.failed} | {
                        s.name for s in todo if record_path(out_dir, s.name).is_file()
                    }
                    for name in futures.values():
                        if name not in finished:
                            summary.failed.append((name, "a worker process crashed; rerun to retry"))
    _write_failures(out_dir, summary.failed)
    if assemble if assemble is not None else n == 1:
        summary.outputs = assemble_outputs(out_dir, [s.name for s in sources], config, out_dir)
    summary.seconds = time.perf_counter() - start
    return summary


def _tally(summary: RunSummary, name: str, error: str, bar) -> None:
    if error:
        summary.failed.append((name, error))
        bar.write(f"failed: {name}: {error}")
    else:
        summary.done += 1
    bar.update()


def _write_failures(out_dir: Path, failed: list[tuple[str, str]]) -> None:
    path = out_dir / FAILURES_FILE
    if not failed:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "reason"])
        writer.writerows(sorted(failed))


def split_names(names: list[str], config: DataPrepConfig) -> dict[str, list[str]]:
    """Train/test split: from `config.split_file` (JSON {"train": [...], "test": [...]}, entries are
    model ids or 'category/model_id'), else the first `train_fraction` of sorted model ids go to
    train, per category (the IM-NET / AtlasNet convention)."""
    if config.split_file:
        wanted = read_split_file(config.split_file)
        return {split: sorted(n for n in names if n.split("/")[-1] in ids) for split, ids in wanted.items()}
    ordered = sorted(names, key=lambda n: n.split("/")[-1])
    n_train = int(round(len(ordered) * config.train_fraction))
    if len(ordered) > 1 and 0 < config.train_fraction < 1:
        # Rounding must not empty a split that a fraction between 0 and 1 asks for; 0 and 1 are
        # taken as said (all test: a held-back evaluation set; all train).
        n_train = min(max(n_train, 1), len(ordered) - 1)
    return {"train": ordered[:n_train], "test": ordered[n_train:]}


def read_split_file(path: str | Path) -> dict[str, set[str]]:
    """A split file: JSON {"train": [...], "test": [...]} -> the model ids of each split."""
    try:
        spec = json.loads(Path(path).read_text())
        return {split: {e.split("/")[-1] for e in spec[split]} for split in ("train", "test")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"split file {path} must be JSON with 'train' and 'test' lists: {e}") from None


def assemble_outputs(
    records_root: Path | list[Path], names: list[str], config: DataPrepConfig, out_dir: Path
) -> dict[str, int]:
    """Write `<category>_<split>.hdf5` (+ names `.txt`) for every category from the record files.

    `records_root` is one output folder or several (to merge shards run on different machines).
    Returns each file written and the number of shapes in it.
    """
    roots = [records_root] if isinstance(records_root, Path) else records_root
    found = {}
    for name in names:
        for root in roots:
            path = record_path(root, name)
            if path.is_file():
                found[name] = path
                break
    outputs = {}
    for category in sorted({n.split("/")[0] for n in found}):
        in_category = [n for n in found if n.split("/")[0] == category]
        for split, split_names_ in split_names(in_category, config).items():
            if not split_names_:
                continue
            out = Path(out_dir) / f"{category}_{split}.hdf5"
            datafile.assemble([found[n] for n in split_names_], out, split_names_)
            outputs[str(out)] = len(split_names_)
    return outputs


def merge(shard_dirs: list[Path], config: DataPrepConfig) -> dict[str, int]:
    """Assemble the HDF5 files from the records of several shard output folders."""
    names = sorted({
        str(p.relative_to(root / RECORDS_DIR).with_suffix(""))
        for root in shard_dirs
        for p in (root / RECORDS_DIR).glob("*/*.npz")
    })
    if not names:
        raise ValueError(f"no prepared shapes found in {', '.join(map(str, shard_dirs))} (expected {RECORDS_DIR}/<category>/<id>.npz)")
    if config.split_file:
        read_split_file(config.split_file)
    check_output_dir(config.out_dir, option="--out")
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    return assemble_outputs(list(shard_dirs), names, config, Path(config.out_dir))

