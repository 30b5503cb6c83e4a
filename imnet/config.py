"""One dataclass config per stage. Each is printed at the start of a run and saved in every checkpoint.

Configs hold only plain values (numbers, strings, tuples), so `asdict` round-trips through a
checkpoint loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imnet.extract import DEFAULT_MAX_BATCH_POINTS, MAX_RESOLUTION
from imnet.mesh import MAX_FACES

__all__ = [
    "ModelConfig",
    "AEConfig",
    "SVRConfig",
    "ReconstructConfig",
    "EvalConfig",
    "DataPrepConfig",
    "config_to_dict",
    "config_from_dict",
    "format_config",
    "check_resolution",
]


@dataclass
class ModelConfig:
    """Architecture. Defaults: the paper's networks with two measured changes (see imnet.model);
    `ModelConfig.paper()` is the paper's exactly."""

    code_dim: int = 128
    decoder_widths: tuple[int, ...] = (2048, 1024, 512, 256, 128)
    decoder_skips: bool = True  # concatenate [p, z] to every hidden layer's output, as in the paper
    point_octaves: int = 4  # Fourier features of the query point (paper: 0, the raw coordinates)
    point_scale: float = 1.0  # with point_octaves 0: the decoder sees point_scale * p
    decoder_init: str = "blocks"  # "blocks" (each weight block uniform +-1/sqrt(fan_in)) or "imnet" (N(0, 0.02))
    code_activation: str = "none"  # "none" (linear codes) or "sigmoid" (paper)
    voxel_channels: tuple[int, ...] = (32, 64, 128, 256)
    voxel_norm: str = "none"  # "none", "batch" (paper) or "instance" (later release); at 4 shapes per step none measured best
    image_size: int = 64  # the ResNet sees the 128x128 view area-averaged to this side (paper: 128); set by IM-SVR

    @classmethod
    def paper(cls) -> "ModelConfig":
        """The architecture of Chen & Zhang (CVPR 2019) as published."""
        return cls(point_octaves=0, decoder_init="imnet", code_activation="sigmoid", voxel_norm="batch", image_size=128)


@dataclass
class AEConfig:
    """IM-AE training: voxel encoder + decoder, progressive over the 16 -> 32 -> 64 point sets.

    Defaults are the recipe that measured best at equal CPU time (docs/training.md);
    `AEConfig.paper()` is the paper's schedule."""

    data: str = ""  # HDF5 file of training shapes (data_prep output or IM-NET's published files)
    val_data: str = ""  # HDF5 file of held-out shapes; empty: no validation
    out_dir: str = "runs/ae"
    model: ModelConfig = field(default_factory=ModelConfig)
    levels: tuple[int, ...] = (16, 32, 64)
    epochs: tuple[int, ...] = (10, 20, 70)  # one entry per level
    minutes: float = 0.0  # > 0: train for this wall time instead; the levels get the shares `epochs` gives them
    batch_shapes: int = 4  # shapes per step (per process under DDP)
    points_per_shape: int = 512  # random subset per shape and step; 0: all points of the level
    uniform_fraction: float = 0.25  # share of those points drawn from the coarse level-16 set at levels 32/64
    stretch: float = 0.0  # > 0: each shape stretched along x, y, z by factors in [1/(1+s), 1+s] (imnet.datasets.AEDataset)
    loss: str = "bce"  # "bce" on logits, or "mse" on occupancy (paper)
    lr: float = 1e-3
    beta1: float = 0.9
    warmup: float = 0.05  # share of all steps with a linearly rising learning rate
    schedule: str = "cosine"  # after the warm-up: "cosine" decay to 5%, or "constant" (paper)
    device: str = "auto"
    precision: str = "auto"  # "auto" (bf16 where measured fast: imnet.precision), "bf16", "fp32"
    seed: int = 0
    val_every: int = 10  # epochs between validations (and always at the end of a level)
    val_resolution: int = 16  # validation IoU on this sub-lattice of the exact 64^3 lattice
    val_shapes: int = 64  # validate on at most this many shapes of each split (0: all)
    final_val_resolution: int = 64  # one last validation at the end (0: none), written to diagnostics.json
    final_val_shapes: int = 64
    calibration_shapes: int = 16  # training shapes the iso-level is measured on at the end (0: keep 0.5; imnet.calibration)
    checkpoint_every: int = 1
    workers: int = 0

    @classmethod
    def paper(cls, **changes) -> "AEConfig":
        """Chen & Zhang's IM-AE training: MSE, Adam 5e-5 / beta1 0.5, constant rate, 32 shapes of all points."""
        base = dict(model=ModelConfig.paper(), epochs=(100, 100, 200), batch_shapes=32, points_per_shape=0,
                    uniform_fraction=0.0, loss="mse", lr=5e-5, beta1=0.5, warmup=0.0, schedule="constant",
                    calibration_shapes=0)  # meshes at level 0.5
        return cls(**{**base, **changes})


@dataclass
class SVRConfig:
    """IM-SVR training: an image encoder regresses the AE codes; the decoder is frozen."""

    data: str = ""
    val_data: str = ""
    ae_checkpoint: str = ""
    codes: str = ""  # .npz of the AE's codes of the data (and val_data) shapes, from `train.py codes`
    out_dir: str = "runs/svr"
    epochs: int = 100
    minutes: float = 0.0  # > 0: train for this wall time instead of `epochs`
    image_size: int = 64  # the ResNet's input side (ModelConfig.image_size of the SVR model); paper: 128
    batch_shapes: int = 16
    lr: float = 1e-3
    beta1: float = 0.9
    warmup: float = 0.05
    schedule: str = "cosine"
    occupancy_weight: float = 0.0  # weight of a BCE loss through the frozen decoder beside the code MSE
    occupancy_points: int = 512  # near-surface points per shape for that loss
    match_weight: float = 0.0  # weight of the identification loss (imnet.training.identification_loss) beside the code MSE
    match_temperature: float = 0.1  # its softmax temperature, in mean squared standardised code distance
    pretrained_image_encoder: str = ""  # local path to ImageNet ResNet-18 weights (never downloaded)
    augment: bool = False  # random shift/scale/tone: -0.04 held-out IoU at equal CPU time (docs/training.md)
    flip: bool = False  # mirror views left-right at random (right for mirror-symmetric shapes; imnet.datasets.SVRDataset)
    val_view: int = 0  # fixed view index used for validation
    train_views: int = 0  # train on views 0..train_views-1 only, holding the rest out (0: all 24)
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    val_every: int = 10
    val_resolution: int = 32
    val_shapes: int = 0  # 0: all validation shapes (self-match compares each with every other)
    checkpoint_every: int = 1
    workers: int = 0

    @classmethod
    def paper(cls, **changes) -> "SVRConfig":
        """The paper's IM-SVR settings: code MSE on full-size views, Adam 5e-5 / beta1 0.5, constant rate."""
        base = dict(image_size=128, batch_shapes=32, lr=5e-5, beta1=0.5, warmup=0.0, schedule="constant")
        return cls(**{**base, **changes})


@dataclass
class ReconstructConfig:
    """Mesh extraction from a trained model."""

    resolution: int = 128
    level: float | None = None  # None: the checkpoint's (Decoder.level, calibrated on training shapes)
    method: str = "auto"  # = "coarse_to_fine"; "certified" (exactly dense, slower) or "dense" (the reference)
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS
    device: str = "auto"
    precision: str = "auto"  # decoder precision: imnet.precision's choice, "bf16" or "fp32"


@dataclass
class EvalConfig:
    """One evaluation run (the options of ``python -m eval run``)."""

    data: str = ""  # test HDF5 file (data_prep output or IM-NET's published files)
    out_dir: str = "eval_out"  # where the tables and the report go (created)
    checkpoint: str = ""  # SVR checkpoint to reconstruct with
    meshes: str = ""  # or: folder of meshes reconstructed earlier, <name with / as _>_viewVV.obj
    train_data: str = ""  # training HDF5 file: enables the retrieval baseline
    retrieval: str = "pixels"  # retrieval features: "pixels", "encoder" or "none"
    view: int = 0  # stored view used as the input image
    resolution: int = 64  # marching-cubes grid of the reconstructions
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS  # decoder points per call
    limit: int = 0  # evaluate only the first N shapes (0: all)
    iou_points: int = 100_000  # points of the volumetric IoU (ONet: 100k)
    surface_points: int = 100_000  # points per surface of Chamfer-L1/L2, NC, F-score (ONet: 100k)
    gt: str = "auto"  # ground-truth surface: "auto" (source mesh if found), "mesh" (required), "voxels"
    device: str = "auto"
    html: bool = True  # write report.html with renders
    published: bool = False  # put the published numbers in summary.md
    seed: int = 0  # seed of the IoU points and the surface samples
    progress: bool = True


def check_resolution(resolution: int, *, low: int = 8, high: int = MAX_RESOLUTION, option: str = "--resolution") -> int:
    """The one check of a program's extraction resolution, before any work: one line naming `option`."""
    if not low <= resolution <= high:
        why = f" (grids are held in memory: {high}^3 float32 is {4 * high**3 / 2**30:g} GiB)" if high == MAX_RESOLUTION else ""
        raise ValueError(f"{option} must be in {low}..{high}{why}, got {resolution}")
    return resolution


C = TypeVar("C")


def config_to_dict(config: Any) -> dict:
    """Plain nested dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict) -> C:
    """Inverse of `config_to_dict`; unknown keys are an error so typos do not pass silently."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            value = config_from_dict(type(default), value)
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def format_config(config: Any) -> str:
    """Readable multi-line dump for the start of a run."""
    return f"{type(config).__name__} " + json.dumps(config_to_dict(config), indent=2)


@dataclass
class DataPrepConfig:
    """Turning meshes / voxels / renderings into IM-NET-layout HDF5 files."""

    out_dir: str = "data"
    close_gaps: int = 2  # voxels: holes up to about twice this wide are closed by the voxeliser
    views: int = 24
    view_size: int = 137
    render: bool = True  # False: no `pixels` (AE-only data)
    voxels_from: str = "mesh"  # "mesh" (our voxeliser) or "binvox" (ShapeNet v2's official solid voxels)
    train_fraction: float = 0.8  # first 80% of sorted model ids go to train (IM-NET / AtlasNet)
    split_file: str = ""
    seed: int = 0
    workers: int = 1
    shard: str = "0/1"
    max_faces: int = MAX_FACES  # larger meshes are logged as failures rather than stalling a worker
