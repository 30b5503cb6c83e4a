"""Finding the shapes to prepare: ShapeNetCore v1/v2 trees, plain mesh folders, binvox files, and
3D-R2N2 renderings to use as their views.

Every input becomes a `ShapeSource`; the rest of the pipeline does not care where it came from.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imnet.datafile import SYNSETS
from imnet.mesh import MESH_SUFFIXES, SHAPENET_FRONT, SHAPENET_UP, axes_rotation

# ShapeNetCore v1 (and ShapeNetVox32, voxelised from it, and so 3D-R2N2's renderings) is ShapeNet
# v2's frame turned -90 degrees about y: y up, the front towards +x instead of -z.
V1_UP, V1_FRONT = "+y", "+x"
R2N2_VIEWS = 24  # 3D-R2N2 rendered 00.png ... 23.png per shape


@dataclass(frozen=True)
class ShapeSource:
    """One shape to prepare.

    name: "category/model_id", the row name in the HDF5 names file.
    kind: "mesh" (a mesh file) or "binvox" (solid voxels, no mesh).
    path: the mesh or binvox file.
    views_dir: a 3D-R2N2 `rendering/` folder to take the views from (else views are rendered).
    binvox: an official solid binvox to voxelise from instead of the mesh (`--voxels-from binvox`).
    up, front: the source's axes (`imnet.mesh`): which axis points up and which one the object's
        front faces. The pipeline turns the shape into ShapeNet v2's axes (up +y, front -z) and
        records both. ShapeNetCore v1 and ShapeNetVox32 are up +y, front +x.
    """

    name: str
    kind: str
    path: str
    views_dir: str = ""
    binvox: str = ""
    up: str = SHAPENET_UP
    front: str = SHAPENET_FRONT

    def __post_init__(self):
        axes_rotation(self.up, self.front)  # refuse impossible axes here, not in a worker

    @property
    def category(self) -> str:
        return self.name.split("/")[0]

    @property
    def model_id(self) -> str:
        return self.name.split("/", 1)[1]


def resolve_synset(name: str) -> str:
    """'chair' -> '03001627'; synset ids pass through."""
    return SYNSETS.get(name.lower(), name)


def shapenet_sources(root: str | Path, synsets: list[str] | None = None, ids: list[str] | None = None) -> list[ShapeSource]:
    """Shapes of a ShapeNetCore v1 (`<synset>/<id>/model.obj`) or v2
    (`<synset>/<id>/models/model_normalized.obj`) tree, optionally limited to some synsets
    (ids or names like 'chair') and model ids ('<id>' or '<synset>/<id>')."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ShapeNet folder not found: {root}")
    wanted_synsets = [resolve_synset(s) for s in synsets] if synsets else sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit()
    )
    if not wanted_synsets:
        raise ValueError(f"{root} holds no synset folders (8-digit names such as 03001627); is it a ShapeNetCore root?")
    wanted_ids = {i.split("/")[-1] for i in ids} if ids else None
    sources = []
    for synset in wanted_synsets:
        synset_dir = root / synset
        if not synset_dir.is_dir():
            raise FileNotFoundError(f"synset {synset} not found under {root}")
        for model_dir in sorted(p for p in synset_dir.iterdir() if p.is_dir()):
            if wanted_ids is not None and model_dir.name not in wanted_ids:
                continue
            v2 = model_dir / "models" / "model_normalized.obj"
            v1 = model_dir / "model.obj"
            mesh = v2 if v2.is_file() else v1 if v1.is_file() else None
            solid = model_dir / "models" / "model_normalized.solid.binvox"
            if mesh is None:
                continue  # the pipeline reports missing meshes only for ids the user asked for
            axes = {} if mesh == v2 else {"up": V1_UP, "front": V1_FRONT}
            sources.append(ShapeSource(
                f"{synset}/{model_dir.name}", "mesh", str(mesh), binvox=str(solid) if solid.is_file() else "", **axes
            ))
    if wanted_ids is not None:
        missing = wanted_ids - {s.model_id for s in sources}
        if missing:
            raise FileNotFoundError(f"{len(missing)} requested model ids have no mesh under {root}, e.g. {sorted(missing)[:3]}")
    return sources


def mesh_folder_sources(root: str | Path, up: str = SHAPENET_UP, front: str = SHAPENET_FRONT) -> list[ShapeSource]:
    """Plain mesh folders: `<root>/<category>/<name>.<obj|off|ply|stl|glb>`, category = folder.

    The model id is the file's stem (`chair/a.obj` -> "chair/a"), or its whole name when several
    files of one category share the stem (`chair/a.obj` and `chair/a.ply` -> "chair/a.obj" and
    "chair/a.ply"), so that no shape overwrites another.
    `up` and `front` are the meshes' axes (e.g. "+z" and "+x" for a z-up CAD export facing +x);
    by default ShapeNet v2's.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mesh folder not found: {root}")
    paths = [path for path in sorted(root.glob("*/*")) if path.suffix.lower() in MESH_SUFFIXES]
    stems = Counter((path.parent.name, path.stem) for path in paths)
    sources = [
        ShapeSource(f"{path.parent.name}/{path.stem if stems[path.parent.name, path.stem] == 1 else path.name}",
                    "mesh", str(path), up=up, front=front)
        for path in paths
    ]
    if not sources:
        raise ValueError(f"no meshes ({', '.join(MESH_SUFFIXES)}) found in the category folders of {root} (expected <root>/<category>/<name>.obj)")
    return sources


def binvox_sources(root: str | Path, up: str = SHAPENET_UP, front: str = SHAPENET_FRONT) -> list[ShapeSource]:
    """Binvox files under `root`: ShapeNetVox32 (`<synset>/<id>/model.binvox`), ShapeNet v2
    (`<synset>/<id>/models/model_normalized.solid.binvox`), or any `<category>/<name>.binvox`.

    The first two are recognised by name and carry their known axes; `up` and `front` are the axes of
    any other binvox file (IM-NET's 256^3 chairs, for one, face +z: ``front="+z"``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"binvox folder not found: {root}")
    sources = []
    for path in sorted(root.rglob("*.binvox")):
        if path.name.endswith(".surface.binvox"):
            continue  # ShapeNet v2's surface-only voxels are not solid
        axes = {"up": up, "front": front}
        if path.name == "model.binvox":  # ShapeNetVox32, voxelised from ShapeNetCore v1
            name, axes = f"{path.parent.parent.name}/{path.parent.name}", {"up": V1_UP, "front": V1_FRONT}
        elif path.name == "model_normalized.solid.binvox":
            name, axes = f"{path.parents[2].name}/{path.parents[1].name}", {}
        else:
            name = f"{path.parent.name}/{path.stem}"
        sources.append(ShapeSource(name, "binvox", str(path), **axes))
    if not sources:
        raise ValueError(f"no .binvox files found under {root}")
    return sources


def attach_r2n2_views(sources: list[ShapeSource], rendering_root: str | Path) -> list[ShapeSource]:
    """Use 3D-R2N2's renderings (`<root>/<synset>/<id>/rendering/`) as the views of the shapes that have them."""
    rendering_root = Path(rendering_root)
    if not rendering_root.is_dir():
        raise FileNotFoundError(f"3D-R2N2 ShapeNetRendering folder not found: {rendering_root}")
    out = []
    for s in sources:
        views = rendering_root / s.category / s.model_id / "rendering"
        out.append(dataclasses.replace(s, views_dir=str(views) if views.is_dir() else ""))
    return out


def read_r2n2_cameras(views_dir: str | Path, n_views: int) -> np.ndarray:
    """float32 [n_views, 5] from `rendering_metadata.txt` (azimuth, elevation, in-plane rotation,
    distance ratio, fov); NaN rows when the file is absent (the images alone are enough to train)."""
    cameras = np.full((n_views, 5), np.nan, np.float32)
    meta = Path(views_dir) / "rendering_metadata.txt"
    if meta.is_file():
        rows = [line.split() for line in meta.read_text().splitlines() if line.strip()]
        for i, row in enumerate(rows[:n_views]):
            cameras[i] = [float(v) for v in row[:5]]
    return cameras
