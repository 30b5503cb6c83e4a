"""Meshes in and out of object space: reading and writing files, normalisation, axis conventions.

Object space (docs/conventions.md) has ShapeNetCore v2's axes -- y up, the object's front towards
-z -- and the source mesh's bounding box centred at the origin with diagonal 1, so every shape lies
in [-0.5, 0.5]^3. A source mesh gets there in two steps, and comes back by their inverses:

    mesh = load_mesh("my_chair.obj")                   # MeshError says why a file is unusable
    to_shapenet_axes(mesh, up="+z", front="+x")        # e.g. a z-up CAD model facing +x
    centre, scale = normalisation(mesh.bounds)         # bounding-box centre and diagonal
    normalise(mesh, centre, scale)                     # p -> (p - centre) / scale
    ...
    from_shapenet_axes(denormalise(mesh, centre, scale), up="+z", front="+x")   # the source frame again

The data files record ``centre``, ``scale``, ``up`` and ``front`` of every shape (``imnet.datafile``),
so evaluation and ``reconstruct.py --original-frame`` undo exactly what data preparation did.

Axes are named ``+x``, ``-x``, ``+y``, ``-y``, ``+z``, ``-z``: ``up`` is the source axis that points
up, ``front`` the one the object's front faces (a chair's seat opening, a car's bonnet, an
airplane's nose). The turn between two such frames is a signed permutation of the axes, applied
exactly (no rounding). Blender's importers call the same two choices "Up" and "Forward".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from imnet.atomic import write_atomic

__all__ = [
    "MeshError",
    "MESH_SUFFIXES",
    "MAX_FACES",
    "AXES",
    "SHAPENET_UP",
    "SHAPENET_FRONT",
    "load_mesh",
    "save_mesh",
    "check_mesh",
    "has_surface",
    "normalisation",
    "normalise",
    "denormalise",
    "axes_rotation",
    "to_shapenet_axes",
    "from_shapenet_axes",
    "axis_argv",
]

MESH_SUFFIXES = (".obj", ".off", ".ply", ".stl", ".glb", ".gltf")
"""Mesh files this project reads (trimesh's loaders); all but .gltf are also written."""

MAX_FACES = 2_000_000
"""Larger meshes are refused: voxelising one would hold a worker for many minutes (a ShapeNet chair
has 10^3 - 10^5 triangles)."""

AXES = ("+x", "-x", "+y", "-y", "+z", "-z")
SHAPENET_UP = "+y"
SHAPENET_FRONT = "-z"


class MeshError(ValueError):
    """A mesh that cannot be used: unreadable, not a triangle mesh, empty, non-finite, too large."""


# ---------------------------------------------------------------------------------------------
# Files


def load_mesh(path: str | os.PathLike, *, max_faces: int = MAX_FACES) -> trimesh.Trimesh:
    """Read a mesh file as one triangle mesh (scenes are merged), as stored: no vertex merging.

    Args:
        path: any format trimesh reads, see :data:`MESH_SUFFIXES`.
        max_faces: larger meshes are refused.

    Returns:
        The mesh in the file's own frame and units.

    Raises:
        MeshError: the file is missing or unreadable, holds no triangles (a point cloud, an empty
            scene), has NaN or infinite vertices, more than ``max_faces`` triangles, or no extent.
            The message names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: no such mesh file")
    if path.suffix.lower() in _TEXT_SUFFIXES and _looks_binary(path):
        # Said before trimesh tries: it would guess a text encoding for the bytes and fail with
        # whatever that guess raises, which says nothing about the file.
        raise MeshError(f"{path}: not a {path.suffix.lower()} mesh (the file holds binary data, and "
                        f"{path.suffix.lower()} files are text); check that it is the file you meant")
    try:
        mesh = trimesh.load(path, force="mesh", process=False, skip_materials=True)
    except ImportError as e:  # an optional dependency of one of trimesh's readers
        raise MeshError(f"{path}: reading it needs the Python package {e.name or e}, which is not "
                        "installed; install the pinned requirements (pip install -r requirements.txt)") from None
    except Exception as e:  # trimesh's loaders raise many types for broken files
        raise MeshError(f"{path}: unreadable mesh ({type(e).__name__}: {e})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshError(f"{path}: mesh has no triangles (an empty file, a point cloud or an empty scene)")
    if len(mesh.faces) > max_faces:
        raise MeshError(f"{path}: mesh has {len(mesh.faces)} triangles, more than max_faces={max_faces}")
    check_mesh(mesh, name=str(path))
    vertices = np.asarray(mesh.vertices)
    if not has_surface(mesh) or not (vertices.max(axis=0) > vertices.min(axis=0)).any():
        raise MeshError(f"{path}: mesh is degenerate (zero area or zero extent)")
    return mesh


# Formats that are text only (PLY, STL and glTF have binary forms).
_TEXT_SUFFIXES = (".obj", ".off")
# Bytes that never occur in a text file in any 8-bit or UTF-8 encoding (tab, newlines, form feed excepted).
_CONTROL_BYTES = bytes([*range(0, 9), 11, *range(14, 32), 127])


def _looks_binary(path: Path, sample: int = 1 << 16) -> bool:
    """Whether the start of a file holds bytes no text mesh has (a Latin-1 or UTF-8 comment is text)."""
    with open(path, "rb") as f:
        head = f.read(sample)
    return len(head.translate(None, _CONTROL_BYTES)) < len(head)


def save_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike, **export_options) -> Path:
    """Write ``mesh`` atomically, in the format its suffix names (obj, ply, off, stl, glb).

    ``export_options`` go to ``trimesh.Trimesh.export`` (e.g. ``include_normals=True`` for glb).
    """
    path = Path(path)
    file_type = path.suffix.lower().lstrip(".")
    if f".{file_type}" not in MESH_SUFFIXES or file_type == "gltf":
        raise MeshError(f"{path}: cannot write .{file_type} meshes; use one of obj, ply, off, stl, glb")
    return write_atomic(path, mesh.export(file_type=file_type, **export_options))


# ---------------------------------------------------------------------------------------------
# Checks


def check_mesh(mesh: object, *, name: str = "mesh", surface: bool = True) -> trimesh.Trimesh:
    """The one check of a mesh argument, used by everything that takes meshes.

    Args:
        mesh: what was passed.
        name: how the message calls it.
        surface: also require at least one face and finite vertex coordinates (``False`` checks the
            type only, for callers that score an empty prediction rather than refuse it).

    Returns:
        ``mesh``.

    Raises:
        MeshError: not a ``trimesh.Trimesh``, or (with ``surface``) no faces or non-finite vertices.
    """
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(
            f"{name} must be a trimesh.Trimesh, got {type(mesh).__name__}; load files with "
            "imnet.mesh.load_mesh (or trimesh.load(path, force='mesh')) to merge a scene into one mesh"
        )
    if surface:
        if len(mesh.faces) == 0:
            raise MeshError(f"{name} has no faces")
        bad = int((~np.isfinite(np.asarray(mesh.vertices))).any(axis=1).sum())
        if bad:
            raise MeshError(f"{name} has {bad} vertices with NaN or infinite coordinates; remove or repair them first")
    return mesh


def has_surface(mesh: trimesh.Trimesh) -> bool:
    """Whether the mesh has faces, finite vertices and a positive area (something to sample)."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if len(mesh.faces) == 0 or not np.isfinite(vertices).all():
        return False
    # Measured on the vertices scaled to unit size: at coordinates near 1e300 (or 1e-300) the
    # squared lengths in a plain area over- (under-) flow.
    size = np.abs(vertices).max()
    if size == 0:
        return False
    triangles = vertices[mesh.faces] / size
    return bool(np.abs(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])).max() > 0)


# ---------------------------------------------------------------------------------------------
# Normalisation


def normalisation(bounds: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale of the project's normalisation of a shape with bounding box ``bounds``.

    Args:
        bounds: float [2, 3], min and max corner (e.g. ``mesh.bounds``).

    Returns:
        centre: float64 [3], the box's centre. scale: the box's diagonal. ``(p - centre) / scale``
        then has its bounding box centred at the origin with diagonal 1, inside [-0.5, 0.5]^3.

    Raises:
        MeshError: the box has no extent or is not finite.
    """
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.shape != (2, 3):
        raise ValueError(f"bounds must be [[xmin, ymin, zmin], [xmax, ymax, zmax]], got shape {bounds.shape}")
    if not np.isfinite(bounds).all():
        raise MeshError(f"shape has non-finite coordinates (bounds {bounds.tolist()})")
    half = bounds[1] / 2 - bounds[0] / 2  # halves first: the full extent of +-1e308 overflows
    size = np.abs(half).max()
    if not size > 0:
        raise MeshError(f"shape has zero extent (bounds {bounds.tolist()})")
    with np.errstate(over="ignore", under="ignore"):
        scale = float(np.linalg.norm(bounds[1] - bounds[0]))
        if not (np.isfinite(scale) and scale > 0):  # squares over- or underflowed: measure at unit size
            scale = float(2 * size * np.linalg.norm(half / size))
    if not np.isfinite(scale):
        raise MeshError(f"shape is too large to normalise: its bounding-box diagonal exceeds the float64 range "
                        f"(bounds {bounds.tolist()}); scale the mesh down first")
    return bounds[0] / 2 + bounds[1] / 2, scale


def normalise(mesh: trimesh.Trimesh, centre: np.ndarray | None = None, scale: float | None = None) -> trimesh.Trimesh:
    """Map ``mesh`` into object space in place, ``p -> (p - centre) / scale``; returns it.

    Without ``centre`` and ``scale``, the mesh's own :func:`normalisation` is used.
    """
    if centre is None or scale is None:
        centre, scale = normalisation(mesh.bounds)
    mesh.apply_translation(-np.asarray(centre, dtype=np.float64))
    mesh.apply_scale(1.0 / float(scale))
    return mesh


def denormalise(mesh: trimesh.Trimesh, centre: np.ndarray, scale: float) -> trimesh.Trimesh:
    """The inverse of :func:`normalise`, in place, ``p -> p * scale + centre``; returns the mesh."""
    mesh.apply_scale(float(scale))
    mesh.apply_translation(np.asarray(centre, dtype=np.float64))
    return mesh


# ---------------------------------------------------------------------------------------------
# Axes


def _axis(name: str, role: str) -> np.ndarray:
    if name not in AXES:
        raise ValueError(f"{role} must be one of {', '.join(AXES)}, got {name!r}")
    vector = np.zeros(3)
    vector["xyz".index(name[1])] = 1.0 if name[0] == "+" else -1.0
    return vector


def axes_rotation(up: str = SHAPENET_UP, front: str = SHAPENET_FRONT) -> np.ndarray:
    """The rotation that turns a frame with these ``up`` and ``front`` axes into ShapeNet v2's.

    Args:
        up: the source axis that points up, e.g. "+z" for most CAD and scanning software.
        front: the source axis the object's front faces.

    Returns:
        float64 [3, 3], a signed permutation with determinant 1: ``R @ up = +y``, ``R @ front = -z``.
        ShapeNet v1 (up "+y", front "+x") gives the +90 degree turn about y.

    Raises:
        ValueError: an axis is not one of :data:`AXES`, or ``up`` and ``front`` lie on one line.
    """
    u, f = _axis(up, "up"), _axis(front, "front")
    if abs(u @ f) > 0:
        raise ValueError(f"up ({up}) and front ({front}) must be different axes")
    # Rows say where the target axes come from: y from up, z from the back (-front), x = y cross z.
    return np.stack([np.cross(u, -f), u, -f])


def _turn(mesh: trimesh.Trimesh, rotation: np.ndarray) -> trimesh.Trimesh:
    if not np.array_equal(rotation, np.eye(3)):
        transform = np.eye(4)
        transform[:3, :3] = rotation
        mesh.apply_transform(transform)
    return mesh


def to_shapenet_axes(mesh: trimesh.Trimesh, up: str = SHAPENET_UP, front: str = SHAPENET_FRONT) -> trimesh.Trimesh:
    """Turn a mesh with the given ``up``/``front`` axes into ShapeNet v2's (y up, front -z), in
    place; returns it. A no-op for the defaults."""
    return _turn(mesh, axes_rotation(up, front))


def from_shapenet_axes(mesh: trimesh.Trimesh, up: str = SHAPENET_UP, front: str = SHAPENET_FRONT) -> trimesh.Trimesh:
    """The inverse of :func:`to_shapenet_axes`, in place; returns the mesh."""
    return _turn(mesh, axes_rotation(up, front).T)


def axis_argv(argv: list[str], options: tuple[str, ...] = ("--up", "--front")) -> list[str]:
    """Command-line arguments with ``--front -z`` joined into ``--front=-z``.

    argparse reads a value that starts with "-" as the next option, so the negative axes could
    otherwise only be given as ``--front=-z``; the programs taking ``--up``/``--front`` pass their
    arguments through this first.
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in options and arg in AXES:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out
