"""Read and write binvox voxel files (ShapeNet's `*.binvox`, ShapeNetVox32, IM-NET's 64^3 samples).

A binvox file is a short text header followed by run-length encoded bytes::

    #binvox 1
    dim D D D
    translate tx ty tz
    scale s
    data
    <value byte><count byte><value byte><count byte>...

The decoded D^3 values are stored with x slowest and y fastest, i.e. the stored array is indexed
[x, z, y]. This module converts to and from the project-wide [x, y, z] indexing, so callers never see
binvox's order. The world position of a voxel centre along each axis is
``(index + 0.5) / D * scale + translate`` -- equivalently, the grid covers the box
``[translate, translate + scale]`` (see `binvox_bounds`), which is the layout `imnet.voxelize` uses
for its `bounds` argument.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["read_binvox", "write_binvox", "binvox_bounds"]

_MAX_RUN = 255  # a run's count is a single byte


def read_binvox(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float]:
    """Read a binvox file.

    Args:
        path: the `.binvox` file.

    Returns:
        voxels: bool [D, D, D], indexed [x, y, z].
        translate: float64 [3], world position of the grid's minimum corner.
        scale: side length of the (cubic) grid in world units.

    Raises:
        ValueError: the file is not binvox, its grid is not cubic, or its data is truncated.
    """
    with open(path, "rb") as f:
        magic = f.readline().strip()
        if not magic.startswith(b"#binvox"):
            raise ValueError(f"{path}: not a binvox file (first line is {magic[:40]!r}, expected b'#binvox 1')")
        dims = translate = scale = None
        for line in iter(f.readline, b""):
            key, *values = line.split() or [b""]
            if key == b"data":
                break
            if key == b"dim":
                dims = [int(v) for v in values]
            elif key == b"translate":
                translate = np.array([float(v) for v in values], dtype=np.float64)
            elif key == b"scale":
                scale = float(values[0])
        else:
            raise ValueError(f"{path}: binvox header has no 'data' line; the file is truncated or not binvox")
        payload = f.read()

    missing = [name for name, v in (("dim", dims), ("translate", translate), ("scale", scale)) if v is None]
    if missing:
        raise ValueError(f"{path}: binvox header lacks {', '.join(missing)}")
    if translate.shape != (3,):
        raise ValueError(f"{path}: binvox 'translate' needs 3 values, got {translate.shape[0]}")
    if len(dims) != 3 or len(set(dims)) != 1:
        raise ValueError(
            f"{path}: binvox grid is {'x'.join(map(str, dims))}; only cubic grids (dim D D D) are supported"
        )
    size = dims[0]

    runs = np.frombuffer(payload, dtype=np.uint8)
    if len(runs) % 2:
        runs = runs[:-1]  # a lone trailing byte cannot be a run; the length check below decides
    values, counts = runs[0::2], runs[1::2]
    n_decoded = int(counts.sum(dtype=np.int64))
    if n_decoded < size**3:
        raise ValueError(
            f"{path}: binvox data is truncated: runs decode to {n_decoded} voxels, dim {size}^3 needs {size**3}"
        )
    flat = np.repeat(values != 0, counts)[: size**3]
    # Stored [x, z, y] -> project order [x, y, z].
    voxels = np.ascontiguousarray(flat.reshape(size, size, size).transpose(0, 2, 1))
    return voxels, translate, scale


def write_binvox(
    path: str | os.PathLike,
    voxels: np.ndarray,
    translate: np.ndarray | tuple[float, float, float] = (-0.5, -0.5, -0.5),
    scale: float = 1.0,
) -> None:
    """Write a binvox file readable by `read_binvox`, binvox's `viewvox` and other binvox readers.

    Args:
        path: output file.
        voxels: bool-like [D, D, D], indexed [x, y, z]; nonzero means occupied.
        translate: [3] world position of the grid's minimum corner (default: the [-0.5, 0.5]^3 cube).
        scale: side length of the grid in world units.
    """
    voxels = np.asarray(voxels)
    if voxels.ndim != 3 or len(set(voxels.shape)) != 1:
        raise ValueError(f"voxels must be a cubic [D, D, D] array, got shape {voxels.shape}")
    translate = np.asarray(translate, dtype=np.float64).reshape(-1)
    if translate.shape != (3,):
        raise ValueError(f"translate must have 3 values, got {translate.shape[0]}")
    size = voxels.shape[0]

    flat = (voxels != 0).transpose(0, 2, 1).ravel().astype(np.uint8)  # [x, y, z] -> stored [x, z, y]
    starts = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], starts])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    # Split runs longer than one count byte can hold into pieces of 255 and a remainder.
    pieces = -(-lengths // _MAX_RUN)
    counts = np.full(pieces.sum(), _MAX_RUN, dtype=np.int64)
    last_piece = np.cumsum(pieces) - 1
    counts[last_piece] = lengths - _MAX_RUN * (pieces - 1)
    runs = np.stack([np.repeat(flat[starts], pieces), counts.astype(np.uint8)], axis=1)

    header = (
        f"#binvox 1\ndim {size} {size} {size}\n"
        f"translate {' '.join(repr(float(t)) for t in translate)}\nscale {float(scale)!r}\ndata\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(runs.tobytes())


def binvox_bounds(translate: np.ndarray, scale: float) -> np.ndarray:
    """The box a binvox grid covers, float64 [2, 3] (min corner, max corner).

    This is the `bounds` argument under which `imnet.voxelize.voxelize_solid` reproduces the
    binvox grid's voxel centres.
    """
    translate = np.asarray(translate, dtype=np.float64)
    return np.stack([translate, translate + scale])
