"""Evaluation runs: one mesh per test image, scored against the ground truth, beside the retrieval
baseline scored the same way.

    result = evaluate(EvalConfig(data="chair_test.hdf5", out_dir="eval_out", checkpoint="svr.pt",
                                 train_data="chair_train.hdf5"))

For every shape of the test file, the network reconstructs a mesh from one stored view (its 128x128
network input, ``imnet.images.crop_view``, what it was trained on), or the mesh is read from a folder
of meshes reconstructed earlier. The metrics are ``imnet.metrics``' (see its docstring for both
protocols, and docs/conventions.md).

Ground truth (:func:`ground_truth`)
    Surface: the source mesh named in the data file (``meta/source``, written by data_prep), mapped
    into object space exactly as data_prep did, with the file's ``meta`` axes (up, front), centre
    and scale (``imnet.mesh``) -- kind ``"source_mesh"``. When that
    file cannot be used (data prepared elsewhere, IM-NET's published files, binvox sources), the
    marching-cubes surface of the stored 64^3 voxels -- kind ``"voxels64"``. Each row of the results
    says which one was used.
    Occupancy (IoU): the solid of the source mesh from ``imnet.voxelize.voxelize_solid`` at 128^3
    (robust to ShapeNet's open, non-watertight meshes, where a ray-parity inside test is not), else
    the stored 64^3 voxels.

Prediction occupancy (IoU): the inside test on the predicted mesh (``imnet.metrics.iou_meshes``),
exact for the closed meshes marching cubes produces; open meshes given with ``meshes`` get a warning
from ``imnet.metrics`` and an unreliable IoU. The retrieval baseline's prediction is a training shape's
ground truth, which need not be closed, so its occupancy is that shape's ground-truth solid.

Missing, unreadable or empty predictions get ``imnet.metrics``' worst-case values and count in every
mean; the row's ``prediction`` column says why.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from eval import baseline, report
from imnet.atomic import check_output_dir
from imnet.config import EvalConfig, check_resolution
from imnet.datafile import ShapeData, open_datafile
from imnet.extract import grid_to_mesh
from imnet.images import crop_view
from imnet.mesh import (
    MESH_SUFFIXES,
    SHAPENET_FRONT,
    SHAPENET_UP,
    MeshError,
    load_mesh,
    normalisation,
    normalise,
    to_shapenet_axes,
)
from imnet.diagnostics import identification
from imnet.metrics import (
    chamfer_imnet,
    grid_centres,
    inside_mesh,
    iou_meshes,
    iou_occupancy,
    mesh_metrics,
    occupancy_from_grid,
    sample_iou_points,
)
from imnet.model import IMNet
from imnet.progress import progress
from imnet.render import DEFAULT_VIEW, View
from imnet.voxelize import voxelize_solid

IDENTIFICATION_RESOLUTION = report.IDENTIFICATION_GRID  # self-match compares every reconstruction with every ground truth on this grid
GT_RESOLUTION = 128  # voxel grid of the ground-truth solid when the source mesh is used
IMNET_POINTS = 4096  # surface points of IM-NET's Chamfer protocol
GT_KINDS = ("source_mesh", "voxels64")
GT_MODES = ("auto", "mesh", "voxels")

METRICS = (
    "iou", "chamfer_l1", "chamfer_l2", "normal_consistency", "fscore@1%", "fscore@2%",
    "chamfer_imnet", "accuracy", "completeness",
)
"""Per-shape metrics, raw (unscaled); the tables print some of them scaled (``report.TABLE_COLUMNS``)."""


@dataclass
class GroundTruth:
    """The ground truth of one shape in object space [-0.5, 0.5]^3.

    Attributes:
        mesh: the surface the Chamfer distances, normal consistency and F-scores compare with.
        occupancy: bool [R, R, R] solid over [-0.5, 0.5]^3 (R = 128 or 64), indexed [x, y, z].
        kind: "source_mesh" or "voxels64" (see the module docstring).
    """

    mesh: trimesh.Trimesh
    occupancy: np.ndarray
    kind: str


@dataclass
class Prediction:
    """A predicted mesh and what it cost (``evaluations``/``seconds`` are None for meshes read from files)."""

    mesh: trimesh.Trimesh
    status: str  # "ok", "empty", "missing" or "unreadable"
    evaluations: int | None = None
    seconds: float | None = None


@dataclass
class EvalResult:
    """What a run produced: one row per shape, the summary and the files written."""

    rows: list[dict]
    summary: dict
    files: dict[str, Path] = field(default_factory=dict)

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        means = self.summary["methods"]
        found = self.summary["run"].get("identification", {})
        match = lambda method: f", self-match {found[method]['self_match']:.2f}" if method in found else ""
        parts = [f"evaluated {len(self.rows)} shapes: " + report.headline(means["network"]["shape_mean"]) + match("network")]
        if "retrieval" in means:
            parts.append("retrieval baseline: " + report.headline(means["retrieval"]["shape_mean"]) + match("retrieval"))
        where = ", ".join(str(path) for key, path in self.files.items() if key in ("summary.md", "report.html"))
        return "; ".join(parts) + f"; see {where}"


# ---------------------------------------------------------------------------------------------
# Ground truth and scores of one shape


def source_mesh_path(data: ShapeData, index: int) -> Path | None:
    """The source mesh recorded for a shape, if it is a mesh file that exists.

    A relative path is looked up from the working directory, then beside the data file.
    """
    if data.meta is None or not data.meta["source"][index]:
        return None
    source = Path(data.meta["source"][index])
    if source.suffix.lower() not in MESH_SUFFIXES:  # e.g. a .binvox source: no surface to compare with
        return None
    candidates = [source] if source.is_absolute() else [source, data.path.parent / source]
    return next((path for path in candidates if path.is_file()), None)


def ground_truth(
    data: ShapeData, index: int, *, use: str = "auto", resolution: int = GT_RESOLUTION
) -> GroundTruth:
    """Ground-truth surface and solid of one shape of a data file (see the module docstring).

    Args:
        data: an open data file.
        index: row of the shape.
        use: "auto" (source mesh when found and usable, else the 64^3 voxels), "mesh" (the source
            mesh, or a ValueError saying why it cannot be used) or "voxels" (always the voxels).
        resolution: voxel grid of the solid made from a source mesh.

    Returns:
        The :class:`GroundTruth`, mesh and solid in object space.
    """
    if use not in GT_MODES:
        raise ValueError(f"use must be one of {GT_MODES}, got {use!r}")
    if use != "voxels":
        mesh, reason = _normalised_source_mesh(data, index)
        if mesh is not None:
            return GroundTruth(mesh, voxelize_solid(mesh, resolution), "source_mesh")
        if use == "mesh":
            raise ValueError(
                f"shape {index} of {data.path}: {reason}; use --gt auto or --gt voxels to compare with "
                "the stored 64^3 voxels instead"
            )
    voxels = np.asarray(data.voxels[index]) != 0
    if not voxels.any():
        raise ValueError(f"shape {index} of {data.path} has empty voxels; there is no ground truth to compare with")
    return GroundTruth(grid_to_mesh(voxels.astype(np.float32), level=0.5), voxels, "voxels64")


def _normalised_source_mesh(data: ShapeData, index: int) -> tuple[trimesh.Trimesh | None, str]:
    """(source mesh in object space, "") or (None, why not)."""
    path = source_mesh_path(data, index)
    if path is None:
        recorded = data.meta["source"][index] if data.meta is not None else ""
        return None, f"no usable source mesh (recorded source: {recorded or 'none'})"
    centre, scale = data.meta["centre"][index], float(data.meta["scale"][index])
    if not (np.isfinite(centre).all() and np.isfinite(scale) and scale > 0):
        return None, "the file holds no normalisation (meta centre/scale) for its source mesh"
    try:
        mesh = load_mesh(path)
    except MeshError as e:
        return None, str(e)
    to_shapenet_axes(mesh, data.meta["up"][index], data.meta["front"][index])
    return normalise(mesh, centre, scale), ""


def score_mesh(
    pred_mesh: trimesh.Trimesh,
    gt: GroundTruth,
    *,
    pred_occupancy: np.ndarray | None = None,
    iou_points: int = 100_000,
    surface_points: int = 100_000,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of one prediction against its ground truth, raw (unscaled).

    Args:
        pred_mesh: predicted surface in object space; empty gives the worst-case values.
        gt: the ground truth.
        pred_occupancy: bool [R, R, R] solid of the prediction for the IoU; default: the inside
            test on ``pred_mesh`` (which must then be closed).
        iou_points: points of the volumetric IoU, uniform in [-0.55, 0.55]^3.
        surface_points: points per surface of the ONet-protocol metrics.
        seed: seed of the IoU points and of the surface samples.

    Returns:
        dict with the keys of ``METRICS``.
    """
    if pred_occupancy is None:
        iou = iou_meshes(pred_mesh, gt_occupancy=gt.occupancy, n_points=iou_points, seed=seed)
    else:
        points = sample_iou_points(iou_points, seed=seed)
        iou = iou_occupancy(occupancy_from_grid(pred_occupancy, points), occupancy_from_grid(gt.occupancy, points))
    scores = {"iou": iou, **mesh_metrics(pred_mesh, gt.mesh, n_points=surface_points, seed=seed)}
    scores["chamfer_imnet"] = chamfer_imnet(pred_mesh, gt.mesh, n_points=IMNET_POINTS, seed=seed)
    return {key: float(scores[key]) for key in METRICS}


# ---------------------------------------------------------------------------------------------
# Where predictions come from


def mesh_file_stem(name: str, view: int) -> str:
    """File stem reconstruct.py gives the mesh of a data-file shape: ``<name, / as _>_viewVV``."""
    return f"{name.replace('/', '_')}_view{view:02d}"


def read_prediction(folder: Path, stem: str) -> Prediction:
    """The mesh ``<folder>/<stem>.<obj|off|ply|stl|glb|gltf>`` (status "missing" when there is none)."""
    path = next((folder / f"{stem}{suffix}" for suffix in MESH_SUFFIXES if (folder / f"{stem}{suffix}").is_file()), None)
    return Prediction(trimesh.Trimesh(), "missing") if path is None else read_mesh_file(path)


def read_mesh_file(path: Path) -> Prediction:
    """A predicted mesh from a file; never raises for a bad file: the status says what was wrong
    ("empty" for an empty file, "unreadable" for anything ``imnet.mesh.load_mesh`` refuses)."""
    if path.stat().st_size == 0:
        return Prediction(trimesh.Trimesh(), "empty")
    try:
        return Prediction(load_mesh(path), "ok")
    except MeshError:
        return Prediction(trimesh.Trimesh(), "unreadable")


def _predictor(
    config: EvalConfig, model: IMNet | None, stems: list[str]
) -> Callable[[int, np.ndarray | None], Prediction]:
    """predict(row, input crop) -> Prediction: the network's reconstruction, or the mesh file of the row."""
    if config.meshes:
        folder = Path(config.meshes)
        return lambda i, image: read_prediction(folder, stems[i])

    from imnet.inference import reconstruct_image

    def reconstruct(i: int, image: np.ndarray) -> Prediction:
        with warnings.catch_warnings():
            # An empty field is reported in the row's `prediction` column instead.
            warnings.filterwarnings("ignore", message="the field exceeds level")
            result = reconstruct_image(model, image, resolution=config.resolution, max_batch_points=config.max_batch_points)
        status = "ok" if len(result.mesh.faces) else "empty"
        return Prediction(result.mesh, status, result.evaluations, result.seconds)

    return reconstruct


def _load_model(config: EvalConfig) -> IMNet:
    from imnet.checkpoint import load_model
    from imnet.precision import resolve_device

    device = resolve_device(config.device)
    model, _ = load_model(config.checkpoint, stage="svr", map_location=device)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# A run


def _check(config: EvalConfig) -> None:
    if not config.checkpoint and not config.meshes:
        raise ValueError("give --checkpoint (to reconstruct) or --meshes (to evaluate meshes reconstructed earlier)")
    if config.retrieval not in (*baseline.FEATURES, "none"):
        raise ValueError(f"retrieval features must be one of {baseline.FEATURES} or none, got {config.retrieval!r}")
    if config.retrieval == "encoder" and not config.checkpoint:
        raise ValueError("--retrieval encoder needs --checkpoint (its image encoder gives the features)")
    if config.gt not in GT_MODES:
        raise ValueError(f"--gt must be one of {GT_MODES}, got {config.gt!r}")
    check_resolution(config.resolution)
    if config.limit < 0:
        raise ValueError(f"--limit must be 0 (all) or positive, got {config.limit}")
    for name in ("iou_points", "surface_points", "max_batch_points"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if config.checkpoint and not Path(config.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {config.checkpoint}")
    if config.meshes and not Path(config.meshes).is_dir():
        raise FileNotFoundError(f"--meshes folder not found: {config.meshes}")
    if config.train_data and not Path(config.train_data).is_file():
        raise FileNotFoundError(f"training data file not found: {config.train_data}")
    check_output_dir(config.out_dir, option="--out")


def _input_crops(data: ShapeData, rows: range, view: int) -> np.ndarray | None:
    """uint8 [n, 128, 128] network-input crops of one view of the given rows, or None without views."""
    if data.pixels is None:
        return None
    if not 0 <= view < data.pixels.shape[1]:
        raise ValueError(f"--view must be in 0..{data.pixels.shape[1] - 1}, got {view}")
    return np.stack([crop_view(data.pixels[i, view]) for i in rows])


def _camera(data: ShapeData, index: int, view: int) -> View:
    """The camera of the stored view, so renders match the input image (the default view if unknown)."""
    if data.meta is not None:
        azimuth, elevation, _, distance_ratio, _ = (float(v) for v in data.meta["cameras"][index, view])
        if all(math.isfinite(v) for v in (azimuth, elevation, distance_ratio)):
            return View(azimuth, elevation, distance_ratio)
    return DEFAULT_VIEW


def evaluate(config: EvalConfig) -> EvalResult:
    """Run an evaluation and write its outputs into ``config.out_dir`` (see ``eval.report``).

    Raises:
        FileNotFoundError, ValueError: a user mistake (missing file, data without views, wrong
            checkpoint, bad option), with a message that says how to fix it. These are all found
            before anything is written.
    """
    _check(config)
    with ExitStack() as stack:
        data = stack.enter_context(open_datafile(config.data))
        rows_to_do = range(min(config.limit, len(data)) if config.limit else len(data))
        names = data.names or [f"shape_{i:05d}" for i in range(len(data))]
        crops = _input_crops(data, rows_to_do, config.view)
        if crops is None and not config.meshes:
            raise ValueError(f"{config.data} holds no views ('pixels'), so there are no input images to reconstruct from")
        stems = [mesh_file_stem(names[i], config.view) for i in rows_to_do]
        if config.meshes and not any(
            (Path(config.meshes) / f"{stem}{suffix}").is_file() for stem in stems for suffix in MESH_SUFFIXES
        ):
            raise ValueError(
                f"{config.meshes} holds none of the meshes expected, e.g. {stems[0]}.obj (reconstruct.py's name "
                f"for view {config.view} of {names[0]}); check --meshes and --view"
            )
        train = None
        if config.train_data and config.retrieval != "none":
            train = stack.enter_context(open_datafile(config.train_data))
            for file in (data, train):
                if file.pixels is None:
                    raise ValueError(f"{file.path} holds no views ('pixels'); the retrieval baseline needs them")

        model = _load_model(config) if config.checkpoint else None
        predict = _predictor(config, model, stems)
        retrieve = _retriever(config, crops, model, train) if train is not None else None
        images = report.ImageWriter(Path(config.out_dir)) if config.html else None
        scoring = dict(iou_points=config.iou_points, surface_points=config.surface_points, seed=config.seed)

        start = time.perf_counter()
        rows = []
        # Occupancy at the 32^3 cell centres of every shape, for identification (self-match).
        centres = grid_centres(IDENTIFICATION_RESOLUTION)
        occupancy = {"truth": [], "network": [], "retrieval": []}
        bar = progress(rows_to_do, desc="evaluating", unit="shape", disable=not config.progress)
        for i in bar:
            gt = ground_truth(data, i, use=config.gt)
            image = crops[i] if crops is not None else None
            prediction = predict(i, image)
            row = {
                "name": names[i],
                "category": names[i].split("/")[0] if "/" in names[i] else "",
                "view": config.view,
                "gt_kind": gt.kind,
                "prediction": prediction.status,
                **score_mesh(prediction.mesh, gt, **scoring),
                "evaluations": prediction.evaluations,
                "seconds": None if prediction.seconds is None else round(prediction.seconds, 4),
            }
            meshes = {"gt": gt.mesh, "prediction": prediction.mesh}
            occupancy["truth"].append(occupancy_from_grid(gt.occupancy, centres))
            occupancy["network"].append(inside_mesh(prediction.mesh, centres))
            if retrieve is not None:
                retrieved_name, distance, truth = retrieve(i)
                occupancy["retrieval"].append(occupancy_from_grid(truth.occupancy, centres))
                scores = score_mesh(truth.mesh, gt, pred_occupancy=truth.occupancy, **scoring)
                row.update({
                    "retrieved_name": retrieved_name,
                    "retrieval_distance": distance,
                    "retrieval_gt_kind": truth.kind,
                    **{report.RETRIEVAL_PREFIX + key: value for key, value in scores.items()},
                })
                meshes["retrieved"] = truth.mesh
            if images is not None:
                row["images"] = images.write(i, names[i], image, meshes, _camera(data, i, config.view))
            rows.append(row)
            bar.set_postfix(iou=f"{np.nanmean([r['iou'] for r in rows]):.3f}")
        bar.close()
        if images is not None:
            images.close()

    run_info = {
        "data": str(config.data),
        "checkpoint": config.checkpoint or None,
        "meshes": config.meshes or None,
        "train_data": config.train_data if train is not None else None,
        "retrieval_features": config.retrieval if train is not None else None,
        "view": config.view,
        "resolution": None if config.meshes else config.resolution,
        "level": None if config.meshes else model.decoder.iso_level,  # the checkpoint's calibrated iso-level
        "iou_points": config.iou_points,
        "surface_points": config.surface_points,
        "imnet_points": IMNET_POINTS,
        "gt_resolution": GT_RESOLUTION,
        "gt_mode": config.gt,
        "seed": config.seed,
        "shapes": len(rows),
        "seconds": round(time.perf_counter() - start, 2),
    }
    if len(rows) > 1:
        run_info["identification"] = {
            method: identification(np.stack(occupancy[method]), np.stack(occupancy["truth"]))
            for method in ("network", "retrieval") if occupancy[method]
        }
    summary = report.summarize(rows, run_info, published=config.published)
    files = report.write_tables(Path(config.out_dir), rows, summary)
    if config.html:
        files["report.html"] = report.write_html(Path(config.out_dir), rows, summary)
    return EvalResult(rows, summary, files)


def _retriever(
    config: EvalConfig, crops: np.ndarray, model: IMNet | None, train: ShapeData
) -> Callable[[int], tuple[str, float, GroundTruth]]:
    """Run the retrieval baseline for all test images; returns row -> (name, distance, ground truth)."""
    index, distance = baseline.retrieve(crops, train, features=config.retrieval, model=model, progress=config.progress)
    names = train.names or [f"shape_{i:05d}" for i in range(len(train))]
    # --gt mesh applies to the test shapes; a training shape without its mesh still has its voxels.
    use = "voxels" if config.gt == "voxels" else "auto"

    # Several test images often retrieve the same training shape; its solid is worth keeping.
    @functools.lru_cache(maxsize=32)
    def truth(j: int) -> GroundTruth:
        return ground_truth(train, j, use=use)

    def retrieve(i: int) -> tuple[str, float, GroundTruth]:
        j = int(index[i])
        return names[j], float(distance[i]), truth(j)

    return retrieve


def compare_mesh_files(
    pred_path: str | Path,
    gt_path: str | Path,
    *,
    normalize: bool = False,
    up: str = SHAPENET_UP,
    front: str = SHAPENET_FRONT,
    iou_points: int = 100_000,
    surface_points: int = 100_000,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of one mesh file against another (``python -m eval metrics``).

    The prediction is taken to be in object space [-0.5, 0.5]^3 (ShapeNet v2's axes, where the IoU
    box is). The ground truth is turned from its axes ``up``/``front`` into ShapeNet v2's
    (``imnet.mesh``). With ``normalize``, both meshes are taken to be in the ground truth's source
    frame (e.g. ``reconstruct.py --original-frame`` output) and both get its turn and
    normalisation (bounding-box centre to the origin, diagonal to 1, as data_prep does). The ground
    truth's solid for the IoU comes from ``voxelize_solid`` at 128^3, so it need not be watertight;
    the prediction should be closed.

    Returns:
        dict with the keys of ``METRICS``, raw.

    Raises:
        FileNotFoundError: a file is missing. MeshError: a file is not a usable mesh.
    """
    for path in (pred_path, gt_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"mesh file not found: {path}")
    prediction, gt_mesh = load_mesh(pred_path), to_shapenet_axes(load_mesh(gt_path), up, front)
    if normalize:
        centre, scale = normalisation(gt_mesh.bounds)
        normalise(to_shapenet_axes(prediction, up, front), centre, scale)
        normalise(gt_mesh, centre, scale)
    gt = GroundTruth(gt_mesh, voxelize_solid(gt_mesh, GT_RESOLUTION), "mesh_file")
    return score_mesh(prediction, gt, iou_points=iou_points, surface_points=surface_points, seed=seed)
