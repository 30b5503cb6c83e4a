"""Read and write IM-NET-layout HDF5 data files.

Our files ("imnet-v1") use IM-NET's published layout, so either project can read the other's data.
Every dataset below is uint8, gzip-compressed and chunked one shape per chunk:

| key | shape | meaning |
|---|---|---|
| ``pixels`` | [N, V, 137, 137] | V grayscale views per shape (24, as 3D-R2N2, unless prepared with
  ``--views``), object dark on white; absent in voxel-only files |
| ``voxels`` | [N, 64, 64, 64, 1] | solid occupancy, indexed [x, y, z] (256^3 grid max-pooled by 4) |
| ``points_16``, ``values_16`` | [N, 4096, 3], [N, 4096, 1] | coarse points and their occupancy |
| ``points_32``, ``values_32`` | [N, 4096, 3], [N, 4096, 1] | near-surface points |
| ``points_64``, ``values_64`` | [N, 16384, 3], [N, 16384, 1] | near-surface points |

Points are indices (x, y, z) into the 256^3 grid over [-0.5, 0.5]^3 (see ``imnet.sampling``).
Our extras, which IM-NET ignores:

- ``occupancy_64`` uint8 [N, 64, 64, 64]: the 256^3 solid at voxels (4i+2, 4j+2, 4k+2), exact
  labels on a 64^3 lattice of points for validation IoU (``imnet.sampling.lattice_occupancy``).
  The max-pooled ``voxels`` are no ground truth for a field sampled at points: on thin chairs the
  exact shape's own occupancy at the 64^3 cell centres scores IoU 0.70 against them.
- group ``meta``: ``centre`` float32 [N, 3] and ``scale`` float32 [N], ``up`` and ``front`` utf-8
  strings [N] (the source's axes, e.g. "+z" and "+x"): object space is ``(R p - centre) / scale`` of
  a source point p, with R the turn ``imnet.mesh.axes_rotation(up, front)`` into ShapeNet v2's axes;
  ``cameras`` float32 [N, V, 5] (azimuth, elevation, in-plane rotation, distance ratio, field of
  view per view), ``source`` utf-8 string [N] (where the shape came from) and ``name`` utf-8 string
  [N] (the names again, in case the text file gets lost). Unknown numbers are NaN, unknown strings
  empty; files written before ``up``/``front`` existed read as ShapeNet's axes ("+y", "-z").
- file attributes ``format`` = "imnet", ``format_version`` = 1, ``point_grid`` = 256.
- beside ``<stem>.hdf5``, a text file ``<stem>.txt`` with one ``synset/model_id`` per line in row
  order, the way IM-NET's published files name their shapes.

``open_datafile`` also reads IM-NET's published files and its original 2018 files, and says which it
found in ``ShapeData.layout``:

- "imnet-v1": the file attribute ``format`` is "imnet" (ours).
- otherwise the point counts per level decide: 4096 / 4096 / 16384 is "imnet-published" (indices
  into the 256^3 grid); 4096 / 8192 / 32768 is "imnet-2018", whose points index the 16^3, 32^3 and
  64^3 grids themselves (checked on the first shape: every index must be below the level's grid
  size). The 2018 files have no ``pixels``; neither foreign layout has ``meta``.

Names come from ``meta/name`` in our files (written with the data, so never out of step) and from
the ``.txt`` beside the file otherwise.

Every dataset is checked when the file is opened, before anything reads it: its per-shape shape
(any V >= 1 views; the point count of ``values_L`` equal to that of ``points_L``), its row count
(every dataset, ``meta`` included, holds N rows), its dtype (integers; float occupancy such as 0.5
is refused, not rounded) and the values of the first shape (occupancy 0 or 1). The error names the
dataset that is wrong.

Shapes in the per-shape record files of the data preparation pipeline (``write_shape_record``) are
dicts with the keys ``voxels`` [64, 64, 64] (or [..., 1]), ``points_L`` [P, 3], ``values_L`` [P] (or
[P, 1]) for L in 16, 32, 64, and optionally ``pixels`` [V, 137, 137], ``occupancy_64`` [64, 64, 64],
``centre`` [3], ``scale`` [], ``cameras`` [V, 5], ``source``, ``name``, ``up`` and ``front`` str. All
shapes of one file have the same number of views V.

Names are ``category/model_id``; for ShapeNet the category is the synset id (:data:`SYNSETS`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from imnet.atomic import atomic_path
from imnet.mesh import SHAPENET_FRONT, SHAPENET_UP
from imnet.sampling import GRID, POINT_COUNTS, indices_to_coords

__all__ = [
    "LEVELS",
    "N_VIEWS",
    "VIEW_SIZE",
    "VOXEL_SIZE",
    "SYNSETS",
    "category_label",
    "write_datafile",
    "assemble",
    "write_shape_record",
    "read_shape_record",
    "LazyRows",
    "ShapeData",
    "open_datafile",
]

SYNSETS = {
    "airplane": "02691156", "bench": "02828884", "cabinet": "02933112", "car": "02958343",
    "chair": "03001627", "display": "03211117", "lamp": "03636649", "speaker": "03691459",
    "rifle": "04090263", "sofa": "04256520", "table": "04379243", "telephone": "04401088",
    "watercraft": "04530566",
}
"""Name -> ShapeNet synset id of the 13 categories single-view reconstruction papers use."""


def category_label(category: str) -> str:
    """A category for people: '03001627' -> 'chair (03001627)'; other names unchanged."""
    names = {synset: name for name, synset in SYNSETS.items()}
    if category in names:
        return f"{names[category]} ({category})"
    return category or "(no category)"

FORMAT = "imnet"
FORMAT_VERSION = 1
LEVELS = (16, 32, 64)
POINT_COUNTS_2018 = {16: 4096, 32: 8192, 64: 32768}
N_VIEWS = 24  # the default number of views per shape (3D-R2N2's); a file may hold any V >= 1
VIEW_SIZE = 137
VOXEL_SIZE = 64

# Per-shape shapes of the uint8 datasets, in file order; None stands for the file's view count V.
_ROW_SHAPES = {
    "pixels": (None, VIEW_SIZE, VIEW_SIZE),
    "voxels": (VOXEL_SIZE, VOXEL_SIZE, VOXEL_SIZE, 1),
    "points_16": (POINT_COUNTS[16], 3),
    "values_16": (POINT_COUNTS[16], 1),
    "points_32": (POINT_COUNTS[32], 3),
    "values_32": (POINT_COUNTS[32], 1),
    "points_64": (POINT_COUNTS[64], 3),
    "values_64": (POINT_COUNTS[64], 1),
    "occupancy_64": (VOXEL_SIZE, VOXEL_SIZE, VOXEL_SIZE),
}
_OPTIONAL = ("pixels", "occupancy_64")  # every shape of a file has them, or none
_REQUIRED = [key for key in _ROW_SHAPES if key not in _OPTIONAL]
# Per-shape shapes of the float32 meta datasets.
_META_SHAPES = {"centre": (3,), "scale": (), "cameras": (None, 5)}
# utf-8 string meta datasets and what a shape without one gets.
_META_STRINGS = {"source": "", "name": "", "up": SHAPENET_UP, "front": SHAPENET_FRONT}

Index = int | slice | Sequence[int] | np.ndarray


# ---------------------------------------------------------------------------------------------
# Writing


def write_datafile(
    path: str | os.PathLike,
    shapes: Sequence[Mapping[str, object]] | Mapping[str, object],
    names: Sequence[str],
    *,
    compression_level: int = 4,
) -> Path:
    """Write shapes to an IM-NET-layout HDF5 file and its names file, atomically.

    The file is written under a temporary name in the same folder and renamed into place, so
    ``path`` is either the complete new file or untouched (an older version, or nothing).

    Args:
        path: output ``.hdf5`` file; the names go to the same path with suffix ``.txt``.
        shapes: either a sequence of N per-shape records (see the module docstring), or one dict of
            stacked arrays with the same keys and a leading axis N (``source`` a list of N strings).
            Either all shapes have ``pixels`` or none.
        names: N names, ``synset/model_id``, in row order.
        compression_level: gzip level 0-9; on real chairs with views, 4 writes ~4x faster than
            9 for ~3% more bytes.

    Returns:
        The path written.
    """
    names = list(names)
    if isinstance(shapes, Mapping):
        records: Iterable[Mapping[str, object]] = _unstack(shapes, len(names))
    else:
        if len(shapes) != len(names):
            raise ValueError(f"got {len(shapes)} shapes but {len(names)} names; give one name per shape")
        records = shapes
    return _write(Path(path), records, len(names), names, compression_level)


def assemble(
    record_paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    compression_level: int = 4,
) -> Path:
    """Stream per-shape record files into one data file, holding one shape in memory at a time.

    Args:
        record_paths: N files written by ``write_shape_record``, in the row order wanted.
        out_path: output ``.hdf5`` file (written atomically, names file beside it).
        names: N names; by default each record's own ``name``.
        compression_level: gzip level 0-9.

    Returns:
        The path written.
    """
    if names is not None and len(names) != len(record_paths):
        raise ValueError(f"got {len(record_paths)} record files but {len(names)} names")
    records = (read_shape_record(p) for p in record_paths)
    return _write(Path(out_path), records, len(record_paths), names, compression_level)


def write_shape_record(path: str | os.PathLike, record: Mapping[str, object]) -> Path:
    """Save one shape's record (see the module docstring) as a compressed ``.npz``, atomically.

    The record is checked here, so a bad shape fails in the worker that made it rather than
    during ``assemble``.
    """
    path = Path(path)
    arrays = _check_record(record, where=str(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # Strings go in as 0-d unicode arrays so the file loads without pickle.
        np.savez_compressed(fh, **{key: np.asarray(value) for key, value in arrays.items()})
    return path


def read_shape_record(path: str | os.PathLike) -> dict[str, np.ndarray | str]:
    """Load a record written by ``write_shape_record``; strings come back as ``str``."""
    with np.load(path, allow_pickle=False) as npz:
        record = {key: npz[key] for key in npz.files}
    for key in _META_STRINGS:
        if key in record:
            record[key] = str(record[key])
    return record


def _write(
    path: Path,
    records: Iterable[Mapping[str, object]],
    n: int,
    names: list[str] | None,
    compression_level: int,
) -> Path:
    if n == 0:
        raise ValueError("no shapes to write; a data file needs at least one shape")
    if names is not None:
        _check_names(names)
    strings: dict[str, list[str]] = {key: [] for key in _META_STRINGS}
    views = None  # the first shape's view count, which every other shape must have
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        count = 0
        for i, record in enumerate(records):
            if i == n:
                raise ValueError(f"got more shapes than the {n} expected")
            arrays = _check_record(record, where=f"shape {i}", views=views)
            if i == 0:
                views = _record_views(arrays)
                meta = {key: np.full((n, *_row_shape(shape, views)), np.nan, np.float32)
                        for key, shape in _META_SHAPES.items()}
                keys = [key for key in _ROW_SHAPES if key in arrays]
                for key in keys:
                    shape = _row_shape(_ROW_SHAPES[key], views)
                    f.create_dataset(
                        key, shape=(n, *shape), dtype=np.uint8, chunks=(1, *shape),
                        compression="gzip", compression_opts=compression_level,
                    )
            for key in _OPTIONAL:
                if (key in arrays) != (key in keys):
                    raise ValueError(
                        f"shape {i} {'has' if key in arrays else 'lacks'} {key} and shape 0 "
                        f"{'lacks' if key in arrays else 'has'} it; either every shape has {key} or none"
                    )
            for key in keys:
                f[key][i] = arrays[key]
            for key in _META_SHAPES:
                if key in arrays:
                    meta[key][i] = arrays[key]
            for key, default in _META_STRINGS.items():
                strings[key].append(arrays.get(key) or default)
            count += 1
        if count != n:
            raise ValueError(f"got {count} shapes but expected {n}")
        if names is None:
            missing = [i for i, name in enumerate(strings["name"]) if not name]
            if missing:
                raise ValueError(f"records {missing[:5]} have no 'name'; pass names= or store them")
            names = strings["name"]
            _check_names(names)
        strings["name"] = names

        group = f.create_group("meta")
        for key, values in meta.items():
            group.create_dataset(key, data=values)
        for key, values in strings.items():
            group.create_dataset(key, data=np.array(values, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["point_grid"] = GRID

    # After the data file: should this fail, the data still carry their names in meta/name.
    with atomic_path(path.with_suffix(".txt")) as names_tmp:
        names_tmp.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


def _row_shape(shape: tuple[int | None, ...], views: int) -> tuple[int, ...]:
    """A per-shape shape of ``_ROW_SHAPES`` / ``_META_SHAPES`` with the view count filled in."""
    return tuple(views if size is None else size for size in shape)


def _top(key: str) -> int:
    """The largest value dataset `key` may hold: grid indices and gray levels 255, occupancy 1."""
    return 255 if key.startswith("points_") or key == "pixels" else 1


def _record_views(record: Mapping[str, object]) -> int:
    """How many views a record holds: those of its pixels, else of its cameras, else the default."""
    for key in ("pixels", "cameras"):
        if key in record and np.ndim(record[key]) >= 1:
            return int(np.shape(record[key])[0])
    return N_VIEWS


def _check_record(record: Mapping[str, object], *, where: str, views: int | None = None) -> dict[str, np.ndarray | str]:
    """Validate a per-shape record and bring it to the file's shapes and dtypes.

    ``views``: the view count the file already has (that of its first shape), or None for the first.
    """
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(f"{where}: record lacks {', '.join(missing)}; have {sorted(record)}")
    record_views = _record_views(record)
    if record_views < 1:
        raise ValueError(f"{where}: 'pixels' holds no views; give at least one view, or no pixels")
    if views is not None and record_views != views and ("pixels" in record or "cameras" in record):
        raise ValueError(f"{where} has {record_views} views but the file's first shape has {views}; "
                         "every shape of a file needs the same number of views")
    out: dict[str, np.ndarray | str] = {}
    for key, shape in _ROW_SHAPES.items():
        if key not in record:
            continue
        shape = _row_shape(shape, record_views)
        value = np.asarray(record[key])
        if key == "voxels" or key.startswith("values_"):
            value = value.reshape(value.shape + (1,)) if value.shape == shape[:-1] else value
        if value.shape != shape:
            raise ValueError(f"{where}: '{key}' has shape {value.shape}, expected {shape}")
        if value.dtype.kind not in "biu":
            raise ValueError(f"{where}: '{key}' has dtype {value.dtype}, expected integers or bools")
        if value.size and (value.min() < 0 or value.max() > _top(key)):
            raise ValueError(f"{where}: '{key}' holds values outside 0..{_top(key)}")
        out[key] = value.astype(np.uint8, copy=False)
    for key, shape in _META_SHAPES.items():
        if key in record:
            shape = _row_shape(shape, record_views)
            value = np.asarray(record[key], dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"{where}: '{key}' has shape {value.shape}, expected {shape}")
            out[key] = value
    for key in _META_STRINGS:
        if key in record:
            out[key] = str(record[key])
    return out


def _check_names(names: Sequence[str]) -> None:
    bad = [name for name in names if not name or "\n" in name or name != name.strip()]
    if bad:
        raise ValueError(f"names must be non-empty single-line strings without outer spaces: {bad[:5]}")


def _unstack(arrays: Mapping[str, object], n: int) -> Iterator[dict[str, object]]:
    for key, value in arrays.items():
        if len(value) != n:
            raise ValueError(f"'{key}' has {len(value)} rows but {n} names were given")
    for i in range(n):
        yield {key: value[i] for key, value in arrays.items()}


# ---------------------------------------------------------------------------------------------
# Reading


class LazyRows:
    """Rows of an HDF5 dataset read on indexing, like an array: ``rows[i]``, ``rows[2:5, 0]``.

    Only the rows asked for are read (each row is one compressed chunk); ``np.asarray(rows)`` reads
    them all. ``drop_channel`` hides the trailing length-1 axis of ``voxels`` [N, 64, 64, 64, 1].
    """

    def __init__(self, dataset: h5py.Dataset, drop_channel: bool = False) -> None:
        self._dataset = dataset
        self._drop_channel = drop_channel
        self.shape = dataset.shape[:-1] if drop_channel else dataset.shape
        self.dtype = dataset.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyRows({self._dataset.name!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = (slice(None), key) if key and key[0] is Ellipsis else (key[0], key[1:])
        data = _read_rows(self._dataset, rows)
        if self._drop_channel:
            data = data[..., 0]
        single_row = not isinstance(rows, slice) and np.ndim(rows) == 0
        # A single row has lost the row axis already; otherwise ``rest`` indexes past it.
        return data[rest] if single_row else data[(slice(None), *rest)]


def _read_rows(dataset: h5py.Dataset, rows: Index) -> np.ndarray:
    if isinstance(rows, slice):
        return dataset[rows]
    resolved = np.arange(len(dataset))[rows]  # negative indices, bool masks; IndexError if out of range
    if resolved.ndim == 0:
        return dataset[int(resolved)]
    # h5py reads lists of rows only in increasing order without repeats.
    unique, inverse = np.unique(resolved, return_inverse=True)
    return dataset[unique][inverse]


class ShapeData:
    """An open IM-NET-layout data file; get one from ``open_datafile``.

    Data are read from the file when asked for, unless ``load_into_memory`` has loaded them; then
    they are served from memory, as stored (uint8). ``voxels`` and ``pixels`` are arrays when loaded
    and ``LazyRows`` views otherwise, indexed the same way (``data.pixels[i, view]``). The point
    accessors take an ``index`` over shapes (int, slice or array of ints; an int drops the shape
    axis, as in numpy).

    Attributes:
        path: the HDF5 file.
        layout: "imnet-v1", "imnet-published" or "imnet-2018" (see the module docstring).
        names: shape names in row order, or None: ``meta/name`` in our files, else the ``.txt``
            file beside the data file if there is one.
        meta: our extras, or None for foreign layouts: ``centre`` float32 [N, 3], ``scale`` float32
            [N], ``cameras`` float32 [N, V, 5], ``source``, ``up`` and ``front`` lists of N str.
        point_counts: points per shape at each level, e.g. {16: 4096, 32: 4096, 64: 16384}.
    """

    def __init__(self, path: Path, file: h5py.File, layout: str, names: list[str] | None,
                 meta: dict | None) -> None:
        self.path = path
        self.layout = layout
        self.names = names
        self.meta = meta
        self.point_counts = {level: file[f"points_{level}"].shape[1] for level in LEVELS}
        self._keys = [key for key in _ROW_SHAPES if key in file]
        self._file: h5py.File | None = file
        self._len = file["voxels"].shape[0]
        self._memory: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"ShapeData({str(self.path)!r}, layout={self.layout!r}, shapes={len(self)}, "
                f"pixels={self.pixels is not None}, in_memory={sorted(self._memory)})")

    def __enter__(self) -> ShapeData:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; data already loaded into memory stay usable."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def has(self, key: str) -> bool:
        """Whether the file holds dataset `key` (e.g. the optional "pixels" or "occupancy_64")."""
        return key in self._keys

    def load_into_memory(self, keys: Iterable[str] | None = None) -> ShapeData:
        """Read datasets into memory once (as stored: uint8), so later accesses skip the file.

        Args:
            keys: dataset names such as ``["voxels", "points_64", "values_64"]``; default all that
                the file has. ``pixels`` take 450 KB per shape, so leave them out when not needed.

        Returns:
            self, for chaining.
        """
        keys = list(self._keys if keys is None else keys)
        unknown = [key for key in keys if key not in self._keys]
        if unknown:
            raise KeyError(f"{self.path} has no dataset {unknown}; it has {self._keys}")
        for key in keys:
            if key not in self._memory:
                self._memory[key] = self._open()[key][...]
        return self

    @property
    def voxels(self) -> np.ndarray | LazyRows:
        """Solid occupancy: uint8 (0/1) [N, 64, 64, 64], indexed [x, y, z] like the points."""
        return self._rows("voxels", drop_channel=True)

    @property
    def pixels(self) -> np.ndarray | LazyRows | None:
        """Rendered views: uint8 [N, V, 137, 137], object dark on white; None in voxel-only files."""
        return self._rows("pixels") if "pixels" in self._keys else None

    @property
    def occupancy_64(self) -> np.ndarray | LazyRows | None:
        """Exact occupancy on the validation lattice: uint8 (0/1) [N, 64, 64, 64], or None.

        Entry [i, j, k] is the 256^3 solid at voxel (4i+2, 4j+2, 4k+2), i.e. at the point
        ``imnet.sampling.lattice_points(64)[i, j, k]``. Only our own files have it.
        """
        return self._rows("occupancy_64") if "occupancy_64" in self._keys else None

    def point_grid(self, level: int) -> int:
        """Resolution of the grid that ``point_indices(level)`` index: 256, or ``level`` for 2018 files."""
        self._check_level(level)
        return level if self.layout == "imnet-2018" else GRID

    def point_indices(self, level: int, index: Index = slice(None)) -> np.ndarray:
        """Stored points: uint8 [N, P, 3] indices (x, y, z) into the ``point_grid(level)`` grid."""
        self._check_level(level)
        return self._rows(f"points_{level}")[index]

    def points(self, level: int, index: Index = slice(None)) -> np.ndarray:
        """Point positions in object space [-0.5, 0.5]^3: float32 [N, P, 3] (x, y, z)."""
        return indices_to_coords(self.point_indices(level, index), grid=self.point_grid(level))

    def values(self, level: int, index: Index = slice(None)) -> np.ndarray:
        """Occupancy of the points: float32 [N, P], 1 inside and 0 outside."""
        self._check_level(level)
        return self._rows(f"values_{level}", drop_channel=True)[index].astype(np.float32)

    def _rows(self, key: str, drop_channel: bool = False) -> np.ndarray | LazyRows:
        if key in self._memory:
            return self._memory[key][..., 0] if drop_channel else self._memory[key]
        return LazyRows(self._open()[key], drop_channel)

    def _check_level(self, level: int) -> None:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")

    def _open(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError(
                f"{self.path} is closed; load what you need with load_into_memory() before closing"
            )
        return self._file


def open_datafile(path: str | os.PathLike) -> ShapeData:
    """Open an IM-NET-layout HDF5 file: ours, IM-NET's published data or its 2018 data.

    The layout is detected as described in the module docstring and reported in ``.layout``;
    points come back in object space whatever the layout.

    Args:
        path: the ``.hdf5`` file. For foreign layouts, names are read from the ``.txt`` file of
            the same stem if there is one.

    Returns:
        A ``ShapeData`` reading lazily from the open file; close it (or use ``with``) when done.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"{path} is not an HDF5 file; expected an IM-NET data file (.hdf5) written by "
            "data_prep or from IM-NET's published data"
        )
    try:
        file = h5py.File(path, "r")
    except OSError as e:  # an HDF5 signature on a truncated or damaged file
        raise ValueError(f"{path}: cannot open the HDF5 file ({e}); it may be truncated or damaged") from None
    try:
        _check_datasets(file, path)
        layout = _detect_layout(file, path)
        if layout == "imnet-v1":
            meta = _read_meta(file)
            # Written in one go with the data, so more trustworthy than the text file beside it.
            names = meta.pop("name")
        else:
            meta = None
            names = _read_names(path, len(file["voxels"]))
        return ShapeData(path, file, layout, names, meta)
    except BaseException:
        file.close()
        raise


def _check_datasets(file: h5py.File, path: Path) -> None:
    """Refuse, naming the dataset, a file whose datasets have the wrong shape, row count or dtype
    (training would fail deep inside, or silently learn from wrong data)."""
    missing = [key for key in _REQUIRED if key not in file]
    if missing:
        raise ValueError(
            f"{path} is not an IM-NET data file: missing datasets {', '.join(missing)} "
            f"(it has {', '.join(sorted(file.keys())) or 'none'})"
        )
    keys = [key for key in _ROW_SHAPES if key in file]
    for key in keys:
        if not isinstance(file[key], h5py.Dataset):
            raise ValueError(f"{path}: '{key}' is a group, not a dataset")
    n = file["voxels"].shape[0] if file["voxels"].ndim else 0
    views = file["pixels"].shape[1] if "pixels" in file and file["pixels"].ndim == 4 else 0
    for key in keys:
        dataset = file[key]
        # Per-shape shape, with names for the sizes the file may choose: views V, points P.
        if key.startswith("values_"):  # as many points as its points_ dataset, whatever the layout
            points = file[f"points_{key.split('_')[1]}"]
            expected = (points.shape[1] if points.ndim == 3 else "P", 1)
        elif key.startswith("points_"):
            expected = ("P", 3)
        else:
            expected = tuple("V" if size is None else size for size in _ROW_SHAPES[key])
        sizes = dataset.shape[1:]
        if len(sizes) != len(expected) or any(e != s for e, s in zip(expected, sizes) if isinstance(e, int)):
            raise ValueError(f"{path}: dataset '{key}' has shape {list(dataset.shape)}, expected "
                             f"[N, {', '.join(map(str, expected))}]")
        if key == "pixels" and views < 1:
            raise ValueError(f"{path}: dataset 'pixels' holds no views (shape {list(dataset.shape)})")
        if dataset.shape[0] != n:
            raise ValueError(f"{path}: dataset '{key}' has {dataset.shape[0]} rows but 'voxels' has {n}; "
                             "every dataset must hold one row per shape")
        if dataset.dtype.kind not in "biu":
            raise ValueError(f"{path}: dataset '{key}' is {dataset.dtype}, expected integers (uint8): "
                             "occupancy 0/1, grid indices or gray levels, as IM-NET stores them")
    if n == 0:
        raise ValueError(f"{path} holds no shapes")
    for key in keys:  # the values of the first shape: reading one row is cheap (one chunk)
        row = file[key][0]
        if row.size and (row.min() < 0 or row.max() > _top(key)):
            raise ValueError(f"{path}: dataset '{key}' holds values from {row.min()} to {row.max()} in its first "
                             f"shape, expected 0..{_top(key)}" + (" (occupancy)" if _top(key) == 1 else ""))
    if "meta" in file and isinstance(file["meta"], h5py.Group):
        group = file["meta"]
        for key in [*_META_SHAPES, *_META_STRINGS]:
            if key not in group:
                continue
            shape = group[key].shape
            expected = _row_shape(_META_SHAPES.get(key, ()), views or (shape[1] if len(shape) > 1 else 0))
            if shape != (n, *expected):
                raise ValueError(f"{path}: dataset 'meta/{key}' has shape {list(shape)}, expected {[n, *expected]}")


def _detect_layout(file: h5py.File, path: Path) -> str:
    if file.attrs.get("format") == FORMAT:
        version = int(file.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {version}, newer than this imnet ({FORMAT_VERSION}); "
                "upgrade imnet to read it"
            )
        return "imnet-v1"
    counts = {level: file[f"points_{level}"].shape[1] for level in LEVELS}
    if counts == POINT_COUNTS:
        return "imnet-published"
    if counts == POINT_COUNTS_2018:
        for level in LEVELS:
            top = int(file[f"points_{level}"][0].max())
            if top >= level:
                raise ValueError(
                    f"{path} has the 2018 point counts but points_{level} holds index {top}, "
                    f"outside the {level}^3 grid that layout indexes; the file mixes layouts"
                )
        return "imnet-2018"
    raise ValueError(
        f"{path} has points per level {counts}, which matches neither IM-NET's published layout "
        f"{POINT_COUNTS} nor its 2018 layout {POINT_COUNTS_2018}"
    )


def _read_meta(file: h5py.File) -> dict:
    group = file["meta"] if "meta" in file else {}
    n = len(file["voxels"])
    views = file["pixels"].shape[1] if "pixels" in file else N_VIEWS
    meta = {key: group[key][...] if key in group else np.full((n, *_row_shape(shape, views)), np.nan, np.float32)
            for key, shape in _META_SHAPES.items()}
    for key, default in _META_STRINGS.items():
        meta[key] = list(group[key].asstr()[...]) if key in group else [default] * n
    return meta


def _read_names(path: Path, n: int) -> list[str] | None:
    names_path = path.with_suffix(".txt")
    if not names_path.is_file():
        return None
    names = [line.strip() for line in names_path.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    if len(names) != n:
        raise ValueError(
            f"{names_path} lists {len(names)} names but {path} holds {n} shapes; "
            "fix or remove the names file"
        )
    return names
