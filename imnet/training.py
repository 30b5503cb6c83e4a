"""Training IM-NET in the paper's two stages: IM-AE, then IM-SVR on the AE's codes.

    train_ae(config)       voxel encoder + decoder learn the occupancy of sampled points,
                           progressively on the 16^3, 32^3 and 64^3 point sets
    extract_codes(...)     the trained voxel encoder's code of every shape, to a .npz file
    train_svr(config)      a ResNet-18 regresses those codes from single views; the decoder is frozen

Each stage is one function whose loop reads top to bottom. Around it: `imnet.runtime` (processes,
device, precision, random streams, the run-folder lock), `imnet.runlog` (metrics.csv, TensorBoard,
console lines), `imnet.checkpoint` (files), `imnet.diagnostics` (what validation reports).

The recipe (defaults of `imnet.config`; docs/training.md has the ablations behind each choice):
- binary cross-entropy on the decoder's logits (the paper: MSE on the sigmoid);
- Adam with a linear warm-up over the first `warmup` share of steps, then cosine decay to 5%;
  with a time budget (`minutes`) the schedule follows the wall time instead of the steps (`Clock`);
- the decoder sees Fourier features of the query point (`point_octaves` 4): with the paper's raw
  coordinates the first layer's ReLU kinks are too few inside the unit cube and detail arrives late;
- linear codes (no sigmoid) and no normalisation in the voxel encoder at 4 shapes per step;
- IM-AE: few shapes per step (4) and many steps: at equal CPU time, progress is limited by the
  number of optimiser steps, not by the points per step; a share of each shape's points is drawn
  from the coarse level-16 set at every level (`uniform_fraction`);
- IM-SVR: codes standardised per dimension (every dimension counts alike in the MSE), 16 views per
  step, a random one of the 24 views per shape and epoch, no augmentation by default, the ResNet at
  64x64 (`image_size`: twice the steps per CPU minute of 128x128, better at equal time); an
  occupancy loss through the frozen decoder and an identification loss (`identification_loss`) are
  options that did not help in our ablations;
- IM-AE ends by measuring the iso-level of the meshes on training shapes (`calibrate_level`,
  `imnet.calibration`), stored in the decoder (`Decoder.level`) and so inherited by IM-SVR.

Every run writes to `config.out_dir`:
    last.pt         the latest checkpoint (atomic); `resume=True` continues from it exactly
    best.pt         the checkpoint with the best validation IoU (only with validation data)
    metrics.csv     one row per epoch (columns: `CSV_COLUMNS`)
    diagnostics.json  the final validation: IoU on training and held-out shapes, code spread,
                    (IM-SVR) code error against the code spread and identification (self-match)
    tensorboard/    the same scalars, plus depth images of a few validation shapes (truth | prediction)

Validation IoU is measured at points where the ground truth is exact: the `val_resolution`^3
sub-lattice of the 256^3 solid that data_prep stores as `occupancy_64` (see imnet.sampling). Files
without it (IM-NET's published data) fall back to the max-pooled 64^3 voxels, which are dilated:
against them a perfect field scores only ~0.7 IoU on thin chairs, so such numbers read low.

Several processes (`torchrun --nproc_per_node N train.py ...`): DistributedDataParallel; each takes
`batch_shapes` shapes per step (effective batch `batch_shapes * N`; the learning rate is not scaled).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from imnet.atomic import atomic_path, check_output_dir, write_atomic
from imnet.calibration import choose_level
from imnet.checkpoint import load_checkpoint, load_model, load_weights_file, save_checkpoint
from imnet.config import AEConfig, SVRConfig, config_to_dict, format_config
from imnet.datafile import LEVELS, ShapeData
from imnet.datasets import AEDataset, SVRDataset, load_shapes, read_codes
from imnet.diagnostics import code_error, code_statistics, identification
from imnet.extract import coarse_to_fine_grid
from imnet.model import CODE_BOUNDS, IMNet, PointEncoding
from imnet.precision import autocast
from imnet.progress import progress
from imnet.runlog import RunLog, preview_image
from imnet.runtime import RunFolderBusy, Runtime
from imnet.sampling import GRID, lattice_points

__all__ = [
    "train_ae", "train_svr", "extract_codes", "occupancy_loss", "identification_loss", "learning_rate", "validate_ae",
    "calibrate_level",
    "SetupError", "TrainingDiverged", "RunSummary", "Progress", "CSV_COLUMNS",
]

CSV_COLUMNS = [
    "epoch", "level", "step", "lr", "train_loss", "val_loss", "val_iou", "train_iou",
    "val_code_spread", "val_code_error_ratio", "val_self_match", "seconds",
]
N_PREVIEW_SHAPES = 4  # validation shapes shown in TensorBoard


class SetupError(ValueError):
    """A run that cannot start: missing or unreadable data, bad settings, wrong checkpoint."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint."""

    epoch: int = 0  # epochs completed, over all levels
    step: int = 0  # optimiser steps taken
    level_index: int = 0  # IM-AE: index into config.levels of the current level
    level_epoch: int = 0  # IM-AE: epochs completed at that level
    best_iou: float = -1.0  # best validation IoU so far (-1: none yet)
    seconds: float = 0.0  # wall time spent in the training loop (what a --minutes budget counts)


@dataclass
class RunSummary:
    """What a run did and wrote."""

    stage: str
    out_dir: Path
    epochs: int
    train_loss: float
    best_iou: float | None
    diagnostics: dict = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)
    stopped_early: bool = False  # stopped by `stop_after_epochs`, resumable

    def __str__(self) -> str:
        parts = [f"{self.stage}: {self.epochs} epochs, last train loss {self.train_loss:.6g}"]
        if self.best_iou is not None:
            parts.append(f"best val IoU {self.best_iou:.4f}")
        final = self.diagnostics
        if "val_iou" in final:
            train = f", train {final['train_iou']:.3f}" if "train_iou" in final else ""
            parts.append(f"final IoU at {final['resolution']}^3: val {final['val_iou']:.3f}{train}")
        if "self_match" in final:
            parts.append(f"self-match {final['self_match']:.2f} (pred-pred {final['pred_pred']:.3f} vs gt-gt {final['gt_gt']:.3f})")
        stopped = " (stopped early; continue with --resume)" if self.stopped_early else ""
        return "; ".join(parts) + f"{stopped}; wrote {', '.join(str(p) for p in self.written)}"


# ---------------------------------------------------------------------------------------------
# The recipe's pieces


SURE_LOGIT = 40.0
"""occupancy_loss detaches points classified right beyond this logit (sigmoid(-40) = 4e-18)."""


def occupancy_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Loss between predicted occupancy logits and true occupancy (0/1), both [B, N].

    "bce": binary cross-entropy on the logits (gradients stay large on confidently wrong points);
    "mse": the paper's mean squared error on sigmoid(logits).

    Points already right by a logit margin of SURE_LOGIT are detached: their gradient (below 1e-17)
    becomes exactly 0. Left in, a trained decoder's logits reach -150, their float32 gradients are
    denormal, and x86 CPUs compute the whole backward pass from them in slow microcode: from the
    demo's final IM-AE weights a step took 89 ms with them and 45 ms without. The loss value is
    unchanged.
    """
    logits = logits.float()
    sure = ((target == 1) & (logits > SURE_LOGIT)) | ((target == 0) & (logits < -SURE_LOGIT))
    logits = torch.where(sure, logits.detach(), logits)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(logits), target)
    raise ValueError(f"loss must be 'bce' or 'mse', got {kind!r}")


def identification_loss(predicted: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of picking each prediction's own shape out of all training shapes by code distance.

    predicted [B, D] and bank [N, D] are standardised codes (every dimension of unit spread over the
    training shapes); index [B] (long) is each prediction's row in `bank`. The logit of shape j is
    -|predicted - bank_j|^2 / (D * temperature): the mean squared distance per dimension, over the
    temperature. The code MSE alone pulls an uncertain prediction towards the mean code, which
    decodes to the same mean-looking shape for every uncertain picture; this term rewards a
    prediction for being nearer its own shape's code than to every other shape's, which is what
    makes reconstructions of different pictures differ (self-match).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    distances = torch.cdist(predicted.float(), bank.float()).square() / predicted.shape[1]  # [B, N]
    return F.cross_entropy(-distances / temperature, index)


def learning_rate(fraction: float, base: float, warmup: float = 0.0, schedule: str = "cosine") -> float:
    """The learning rate `fraction` (0..1) of the way through a run: of its steps, or of its minutes.

    Linear warm-up from base/100 over the first `warmup` share of the run, then "cosine" decay to
    5% of `base` at the end, or "constant" (the paper).
    """
    if fraction < warmup:
        return base * max(fraction / warmup, 0.01)
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    t = min(1.0, (fraction - warmup) / max(1e-12, 1.0 - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


class Clock:
    """How far a run is through its schedule, 0 -> 1.

    Without a time budget: optimiser steps taken / all steps of the given epochs. With one
    (`minutes` > 0): wall time spent in the training loop (validations included, setup and the
    final validation not) / the budget, carried across --resume in `Progress.seconds`. Under DDP the
    processes agree on the time (their mean), so they take the same number of steps.
    """

    def __init__(self, progress: Progress, total_steps: int, minutes: float, runtime: Runtime):
        self.progress, self.total_steps, self.runtime = progress, max(1, total_steps), runtime
        self.budget = 60.0 * minutes
        self.timed = self.budget > 0
        self._start, self._spent = time.perf_counter(), progress.seconds

    def seconds(self) -> float:
        """Training-loop seconds of the run so far (this call's and the resumed ones')."""
        return self._spent + time.perf_counter() - self._start

    def agreed_seconds(self) -> float:
        """`seconds()`, under DDP the processes' mean: what the budget is checked against and what a
        checkpoint stores. Every process must call it at the same point (it is an all-reduce)."""
        seconds = self.seconds()
        if self.runtime.world_size > 1:
            seconds = self.runtime.mean(torch.tensor(seconds, dtype=torch.float64, device=self.runtime.device)).item()
        return seconds

    def fraction(self) -> float:
        if not self.timed:
            return min(1.0, self.progress.step / self.total_steps)
        return min(1.0, self.agreed_seconds() / self.budget)

    def left(self) -> str:
        """For progress bars: minutes left of the budget ("" without one)."""
        return f", {max(0.0, self.budget - self.seconds()) / 60:.1f} min left" if self.timed else ""


# ---------------------------------------------------------------------------------------------
# IM-AE


def train_ae(config: AEConfig, resume: bool = False, stop_after_epochs: int | None = None) -> RunSummary:
    """Train the IM-AE (voxel encoder + decoder) progressively over the point-sampling levels.

    Args:
        config: the run; `config.epochs[i]` epochs are spent at level `config.levels[i]`.
        resume: continue from `out_dir/last.pt` (model, optimiser, level, epoch, RNG states).
        stop_after_epochs: stop (resumably) after this many epochs in this call, e.g. to fit a
            cluster's time slot.
    """
    _check_ae_config(config)
    runtime, log = _start(config, "ae")
    try:
        keys = ["voxels", *(f"{kind}_{level}" for level in {16, *config.levels} for kind in ("points", "values"))]
        train_data = _read_data(config.data, keys, "training data")
        val_data = _read_data(config.val_data, keys, "validation data") if config.val_data else None
        voxel_format = _voxel_memory_format(runtime.device)

        torch.manual_seed(config.seed)  # the same initial weights in every process
        model = IMNet(config.model).to(runtime.device)
        model.voxel_encoder.to(memory_format=voxel_format)
        model.image_encoder.requires_grad_(False)  # trained later, by IM-SVR
        optimizer = _adam(_trainable(model), config.lr, config.beta1, runtime.device)
        total_steps = _steps_per_epoch(len(train_data), config.batch_shapes, runtime) * sum(config.epochs)
        progress = _restore(runtime, log, model, optimizer, config, "ae") if resume else _fresh(runtime, log, config)
        net = runtime.distribute(model)
        clock = Clock(progress, total_steps, config.minutes, runtime)
        # With a time budget, level i ends at this fraction of it: the shares that config.epochs gives the levels.
        level_ends = np.cumsum(config.epochs) / sum(config.epochs)
        first_epoch, losses = progress.epoch, []

        def level_done(index: int) -> bool:
            return clock.fraction() >= level_ends[index] if clock.timed else progress.level_epoch >= config.epochs[index]

        for level_index in range(progress.level_index, len(config.levels)):
            if level_index != progress.level_index:  # the next level starts from the weights so far
                progress.level_index, progress.level_epoch = level_index, 0
            level = config.levels[level_index]
            of_epochs = "" if clock.timed else f"/{config.epochs[level_index]}"
            dataset = AEDataset(train_data, level, config.points_per_shape, config.uniform_fraction, config.stretch)
            last_of_level = level_done(level_index)
            while not last_of_level:
                model.train()
                model.image_encoder.eval()
                epoch_start, losses = time.perf_counter(), []
                loader = _loader(dataset, config, runtime, progress.epoch)
                for batch in _bar(loader, runtime, f"level {level} epoch {progress.level_epoch + 1}{of_epochs}{clock.left()}"):
                    lr = learning_rate(clock.fraction(), config.lr, config.warmup, config.schedule)
                    _set_lr(optimizer, lr)
                    voxels = batch["voxels"].to(runtime.device, non_blocking=True).contiguous(memory_format=voxel_format)
                    points, values = batch["points"].to(runtime.device), batch["values"].to(runtime.device)
                    with autocast(runtime.device, runtime.precision):
                        loss = occupancy_loss(net(voxels, points), values, config.loss)
                    losses.append(_optimizer_step(optimizer, loss, runtime, progress, config.out_dir))
                    if clock.timed and level_done(level_index):
                        break  # the level's share of the time is spent
                progress.epoch += 1
                progress.level_epoch += 1

                val = None
                last_of_level = level_done(level_index)
                if val_data is not None and (progress.epoch % config.val_every == 0 or last_of_level):
                    val = validate_ae(model, val_data, runtime, config.val_resolution, config.val_shapes,
                                      level=level, loss=config.loss, train_data=train_data)
                progress.seconds = clock.agreed_seconds()
                stop = stop_after_epochs is not None and progress.epoch - first_epoch >= stop_after_epochs
                _end_epoch(runtime, log, model, optimizer, progress, config, "ae", losses, lr, val, level,
                           time.perf_counter() - epoch_start, force_checkpoint=stop or last_of_level)
                if stop:
                    return _summary(runtime, log, model, progress, "ae", losses, stopped_early=True)

        # The iso-level meshes are extracted at, measured on training shapes (imnet.calibration), then
        # stored in the decoder of both checkpoints; the final validation already uses it.
        calibration = None
        if config.calibration_shapes and train_data.occupancy_64 is None and runtime.is_main:
            print(f"iso-level stays 0.5: {config.data} has no occupancy_64 (the exact lattice) to calibrate it on")
        if config.calibration_shapes and train_data.occupancy_64 is not None:
            level, calibration = calibrate_level(model, train_data, runtime, config.calibration_shapes)
            model.decoder.level.fill_(level)
            if runtime.is_main:
                _store_level(Path(config.out_dir), model, train_data, runtime, config.calibration_shapes)
                chamfer = dict(zip(calibration["levels"], calibration["boundary_chamfer"]))
                print(f"iso-level {level:g}, calibrated on {min(len(train_data), config.calibration_shapes)} training shapes: "
                      f"boundary Chamfer {chamfer[level]:.3f} cells at {level:g}, {chamfer[0.5]:.3f} at 0.5 (imnet.calibration)")
        diagnostics = None
        if val_data is not None and config.final_val_resolution:
            diagnostics = validate_ae(model, val_data, runtime, config.final_val_resolution, config.final_val_shapes,
                                      train_data=train_data, previews=False, identify=True)
            diagnostics.update(iso_level=model.decoder.iso_level, calibration=calibration)
        return _summary(runtime, log, model, progress, "ae", losses, diagnostics=diagnostics)
    finally:
        log.close()
        runtime.stop()


@torch.no_grad()
def validate_ae(
    model: IMNet,
    data: ShapeData,
    runtime: Runtime,
    resolution: int = 32,
    max_shapes: int = 0,
    *,
    level: int | None = None,
    loss: str = "bce",
    train_data: ShapeData | None = None,
    previews: bool = True,
    identify: bool = False,
) -> dict:
    """IM-AE validation: lattice IoU of the auto-encoded shapes, code spread, loss at `level`'s points.

    Returns {"val_iou", "train_iou" (with `train_data`), "val_loss" (with `level`), "code_spread",
    "saturated_dims", "dead_dims", "resolution", "truth", "previews"}; with `identify`, also the
    held-out shapes' self-match and pred-pred / gt-gt IoU: the ceiling of an IM-SVR on these codes.
    """
    model.eval()
    result = {"resolution": resolution}
    for split, shapes in (("val", data), ("train", train_data)):
        if shapes is None:
            continue
        rows = _rows(len(shapes), max_shapes)
        codes = _encode_voxels(model, shapes, rows, runtime)
        iou, truth_kind, pairs, grids = _lattice_ious(model, codes, shapes, rows, resolution, runtime,
                                                      previews=previews and split == "val", keep=identify and split == "val")
        result[f"{split}_iou"] = iou
        if split == "val":
            if identify and len(rows) > 1:
                result.update(identification(grids[0], grids[1]))
            result["truth"] = truth_kind
            result["previews"] = pairs
            stats = code_statistics(codes.cpu().numpy(), bounds=CODE_BOUNDS[model.config.code_activation]) if len(codes) > 1 else {}
            result.update({f"code_{key}": value for key, value in stats.items()})
            if level is not None:
                result["val_loss"] = _ae_loss_on_points(model, codes, shapes, rows, level, loss, runtime)
    return result


def _ae_loss_on_points(model, codes, shapes, rows, level, loss, runtime) -> float:
    points = torch.from_numpy(shapes.points(level, rows)).to(runtime.device)
    values = torch.from_numpy(shapes.values(level, rows)).to(runtime.device)
    total = 0.0
    for i in range(0, len(rows), 16):
        with autocast(runtime.device, runtime.precision):
            logits = model.decoder.logits(codes[i : i + 16], points[i : i + 16])
        total += occupancy_loss(logits, values[i : i + 16], loss).item() * len(logits)
    return total / max(len(rows), 1)


def _check_ae_config(config: AEConfig) -> None:
    if not config.levels or any(level not in LEVELS for level in config.levels):
        raise SetupError(f"levels must be some of {LEVELS}, got {config.levels}")
    if list(config.levels) != sorted(set(config.levels)):
        raise SetupError(f"levels must increase (coarse to fine), got {config.levels}")
    if len(config.epochs) != len(config.levels):
        raise SetupError(f"give one epoch count per level: levels {config.levels}, epochs {config.epochs}")
    if any(e < 1 for e in config.epochs):
        raise SetupError(f"every level needs at least 1 epoch, got --epochs {_levels_text(config)}")
    if config.calibration_shapes < 0:
        raise SetupError(f"calibration_shapes must be 0 (no calibration) or more, got {config.calibration_shapes}")
    if not 0.0 <= config.uniform_fraction < 1.0:
        raise SetupError(f"uniform_fraction must be in [0, 1), got {config.uniform_fraction}")
    if not 0.0 <= config.stretch < 1.0:
        raise SetupError(f"stretch must be in [0, 1), got {config.stretch}")
    if config.loss not in ("bce", "mse"):
        raise SetupError(f"loss must be 'bce' or 'mse', got {config.loss!r}")
    try:
        PointEncoding(config.model.point_octaves, config.model.point_scale)  # the model's own check, before any work
    except ValueError as e:
        raise SetupError(str(e)) from None
    for name in ("final_val_resolution",):
        value = getattr(config, name)
        if value and (value < 1 or 64 % value):
            raise SetupError(f"{name} must divide 64 (1, 2, ..., 64) or be 0, got {value}")


def _levels_text(config: AEConfig) -> str:
    return ",".join(f"{level}:{epochs}" for level, epochs in zip(config.levels, config.epochs))


# ---------------------------------------------------------------------------------------------
# Codes


@torch.no_grad()
def extract_codes(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    val_data: str | os.PathLike = "",
    device: str = "auto",
    batch_shapes: int = 32,
) -> Path:
    """Encode every shape of the training (and validation) data with a trained IM-AE.

    Writes a `.npz` (see `imnet.datasets` for its keys): `train_codes` float32 [N, code_dim] and
    `train_names` for `data`, `val_codes` / `val_names` for `val_data` when given.
    """
    try:
        check_output_dir(Path(out).parent, option="--out", file=out)  # before the work, not after it
    except ValueError as e:
        raise SetupError(str(e)) from None
    runtime = _runtime(device, "fp32")  # codes are targets: computed once, in full precision
    model, _ = load_model(checkpoint, stage="ae")
    model.to(runtime.device).eval()  # batch norm with its running statistics
    arrays: dict[str, np.ndarray] = {"checkpoint": np.array(str(checkpoint))}
    for split, path in (("train", data), ("val", val_data)):
        if not path:
            continue
        shapes = _read_data(path, ["voxels"], f"{split} data")
        codes = _encode_voxels(model, shapes, range(len(shapes)), runtime, batch_shapes)
        arrays[f"{split}_codes"] = codes.float().cpu().numpy()
        arrays[f"{split}_names"] = np.array(shapes.names or [""] * len(shapes), dtype=str)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(out)


# ---------------------------------------------------------------------------------------------
# IM-SVR


def train_svr(config: SVRConfig, resume: bool = False, stop_after_epochs: int | None = None) -> RunSummary:
    """Train the image encoder to regress the IM-AE codes of the shapes from their rendered views.

    The model (and its frozen decoder and voxel encoder) comes from `config.ae_checkpoint`; the
    targets from `config.codes` (`extract_codes`). Each epoch shows every shape once, from a random
    one of its views; validation uses view `config.val_view`.

    Args and returns: as `train_ae`.
    """
    _check_svr_config(config)
    runtime, log = _start(config, "svr")
    try:
        occupancy = config.occupancy_weight > 0
        train_data = _read_data(config.data, ["pixels", *(["points_64", "values_64"] if occupancy else [])], "training data")
        val_data = _read_data(config.val_data, ["pixels", "voxels"], "validation data") if config.val_data else None
        torch.manual_seed(config.seed)  # the image encoder's initial weights, where it is rebuilt at image_size
        model = _load_ae(config.ae_checkpoint, config.image_size)
        try:
            codes = read_codes(config.codes, "train", train_data)
            val_codes = read_codes(config.codes, "val", val_data, required=False) if val_data is not None else None
        except (OSError, ValueError) as e:
            raise SetupError(str(e)) from None
        if codes.shape[1] != model.config.code_dim:
            raise SetupError(f"{config.codes} holds {codes.shape[1]}-d codes; {config.ae_checkpoint} makes {model.config.code_dim}-d")
        torch.manual_seed(config.seed)
        if not resume:
            model.image_encoder.set_code_statistics(torch.from_numpy(codes))
            if config.pretrained_image_encoder:
                path = config.pretrained_image_encoder
                try:
                    state = load_weights_file(path, "ResNet-18 weights file (torchvision's resnet18 ImageNet .pth)")
                    if not isinstance(state, dict):
                        raise ValueError(f"{path} is not a state dict")
                    model.image_encoder.load_imagenet_state(state, str(path))
                except (OSError, ValueError) as e:
                    raise SetupError(str(e)) from None
        model.to(runtime.device)
        model.image_encoder.to(memory_format=_image_memory_format(runtime.device))
        model.requires_grad_(False)
        model.image_encoder.requires_grad_(True)  # the decoder stays the AE's
        optimizer = _adam(_trainable(model), config.lr, config.beta1, runtime.device)
        total_steps = _steps_per_epoch(len(train_data), config.batch_shapes, runtime) * config.epochs
        progress = _restore(runtime, log, model, optimizer, config, "svr") if resume else _fresh(runtime, log, config)
        net = runtime.distribute(model.image_encoder)
        clock = Clock(progress, total_steps, config.minutes, runtime)
        scale = model.image_encoder.code_scale  # regress standardised codes: every dimension counts alike
        bank = ((torch.from_numpy(codes).to(runtime.device) - model.image_encoder.code_mean) / scale) if config.match_weight > 0 else None
        image_format = _image_memory_format(runtime.device)
        dataset = SVRDataset(train_data, codes, view=None, augment=config.augment, flip=config.flip, train_views=config.train_views,
                             points_per_shape=config.occupancy_points if occupancy else 0)

        def done() -> bool:
            return clock.fraction() >= 1.0 if clock.timed else progress.epoch >= config.epochs

        first_epoch, losses, val = progress.epoch, [], None
        of_epochs = "" if clock.timed else f"/{config.epochs}"
        last = done()
        while not last:
            model.eval()
            model.image_encoder.train()
            epoch_start, losses = time.perf_counter(), []
            for batch in _bar(_loader(dataset, config, runtime, progress.epoch), runtime, f"epoch {progress.epoch + 1}{of_epochs}{clock.left()}"):
                fraction = clock.fraction()
                lr = learning_rate(fraction, config.lr, config.warmup, config.schedule)
                _set_lr(optimizer, lr)
                images = batch["image"].to(runtime.device, non_blocking=True)
                images = images.contiguous(memory_format=image_format)
                target = batch["code"].to(runtime.device, non_blocking=True)
                with autocast(runtime.device, runtime.precision):
                    predicted = net(images).float()
                    loss = F.mse_loss(predicted / scale, target / scale)
                    if bank is not None:
                        standardised = (predicted - model.image_encoder.code_mean) / scale
                        index = batch["index"].to(runtime.device)
                        loss = loss + config.match_weight * identification_loss(standardised, bank, index, config.match_temperature)
                    if occupancy:
                        points, values = batch["points"].to(runtime.device), batch["values"].to(runtime.device)
                        logits = model.decoder.logits(predicted, points)
                        loss = loss + config.occupancy_weight * occupancy_loss(logits, values, "bce")
                losses.append(_optimizer_step(optimizer, loss, runtime, progress, config.out_dir))
                if clock.timed and done():
                    break  # the time budget is spent
            progress.epoch += 1

            val = None
            last = done()
            if val_data is not None and (progress.epoch % config.val_every == 0 or last):
                val = validate_svr(model, val_data, val_codes, runtime, config.val_view, config.val_resolution,
                                   config.val_shapes, identify=last)
            progress.seconds = clock.agreed_seconds()
            stop = stop_after_epochs is not None and progress.epoch - first_epoch >= stop_after_epochs
            _end_epoch(runtime, log, model, optimizer, progress, config, "svr", losses, lr, val, None,
                       time.perf_counter() - epoch_start, force_checkpoint=stop or last)
            if stop:
                return _summary(runtime, log, model, progress, "svr", losses, stopped_early=True)
        return _summary(runtime, log, model, progress, "svr", losses, diagnostics=val)  # the last validation
    finally:
        log.close()
        runtime.stop()


@torch.no_grad()
def validate_svr(
    model: IMNet,
    data: ShapeData,
    codes: np.ndarray | None,
    runtime: Runtime,
    view: int = 0,
    resolution: int = 32,
    max_shapes: int = 0,
    *,
    identify: bool = True,
) -> dict:
    """IM-SVR validation from one view per shape: lattice IoU, code error vs the codes' spread,
    and (with `identify`) self-match with pred-pred vs gt-gt IoU (`imnet.diagnostics`)."""
    model.eval()
    rows = _rows(len(data), max_shapes)
    format_ = _image_memory_format(runtime.device)
    predicted = []
    for chunk in _chunks(rows, 32):
        views = torch.from_numpy(np.asarray(data.pixels[chunk, view]))[:, None, 4:132, 4:132].float() / 255
        with autocast(runtime.device, runtime.precision):
            predicted.append(model.image_encoder(views.to(runtime.device).contiguous(memory_format=format_)).float())
    predicted = torch.cat(predicted)
    iou, truth_kind, pairs, grids = _lattice_ious(model, predicted, data, rows, resolution, runtime, previews=True, keep=True)
    result = {"val_iou": iou, "truth": truth_kind, "resolution": resolution, "previews": pairs, "view": view}
    if codes is not None:
        error = code_error(predicted.cpu().numpy(), codes[list(rows)])
        result.update({"code_mse": error["mse"], "code_mean_mse": error["mean_code_mse"], "code_error_ratio": error["ratio"]})
        # The training loss on held-out views: code MSE in the standardised units the encoder regresses.
        scale = model.image_encoder.code_scale.float().cpu()
        target = torch.from_numpy(np.asarray(codes[list(rows)], np.float32))
        result["val_loss"] = F.mse_loss(predicted.cpu() / scale, target / scale).item()
    if identify and len(rows) > 1:
        result.update(identification(grids[0], grids[1]))
    return result


def _check_svr_config(config: SVRConfig) -> None:
    if not config.ae_checkpoint:
        raise SetupError("IM-SVR starts from a trained IM-AE: give --ae-checkpoint")
    if not config.codes:
        raise SetupError("IM-SVR regresses the AE's codes: give --codes (written by `python train.py codes`)")
    if config.epochs < 1:
        raise SetupError(f"--epochs must be at least 1, got {config.epochs}")
    if config.occupancy_weight < 0 or config.occupancy_points < 0:
        raise SetupError("occupancy_weight and occupancy_points must not be negative")
    if not (math.isfinite(config.match_weight) and config.match_weight >= 0):
        raise SetupError(f"--match-weight must be 0 (off) or a positive number, got {config.match_weight}")
    if not (math.isfinite(config.match_temperature) and config.match_temperature > 0):
        raise SetupError(f"--match-temperature must be a positive number, got {config.match_temperature}")


def _load_ae(path: str, image_size: int | None = None) -> IMNet:
    """The IM-AE of `path`; with `image_size`, its (still untrained) image encoder rebuilt at that size."""
    model, _ = load_model(path, stage="ae")  # refuses an IM-SVR checkpoint in one line
    if image_size is None or image_size == model.config.image_size:
        return model
    try:
        rebuilt = IMNet(dataclasses.replace(model.config, image_size=image_size))
    except ValueError as e:
        raise SetupError(f"--image-size: {e}") from None
    rebuilt.voxel_encoder.load_state_dict(model.voxel_encoder.state_dict())
    rebuilt.decoder.load_state_dict(model.decoder.state_dict())
    return rebuilt


# ---------------------------------------------------------------------------------------------
# What both stages share: start, data, steps, epochs' end, checkpoints


def _start(config: AEConfig | SVRConfig, stage: str) -> tuple[Runtime, RunLog]:
    for name in ("batch_shapes", "val_every", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise SetupError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.val_resolution < 1 or 64 % config.val_resolution:
        raise SetupError(f"val_resolution must divide 64 (1, 2, 4, ..., 64), got {config.val_resolution}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise SetupError(f"--lr must be a positive number, got {config.lr}")
    if not 0.0 <= config.beta1 < 1.0:
        raise SetupError(f"--beta1 must be in [0, 1), got {config.beta1}")
    if not (math.isfinite(config.minutes) and config.minutes >= 0):
        raise SetupError(f"--minutes must be 0 (train the given epochs) or a positive number, got {config.minutes}")
    if not 0.0 <= config.warmup < 1.0:
        raise SetupError(f"--warmup must be in [0, 1), got {config.warmup}")
    if config.schedule not in ("cosine", "constant"):
        raise SetupError(f"--schedule must be cosine or constant, got {config.schedule!r}")
    runtime = _runtime(config.device, config.precision)
    out_dir = Path(config.out_dir)
    try:
        check_output_dir(out_dir, option="--out-dir")  # a file, below a file, or not writable
        runtime.lock(out_dir)
    except (RunFolderBusy, OSError, ValueError) as e:
        runtime.stop()
        raise SetupError(str(e)) from None
    log = RunLog(out_dir, CSV_COLUMNS, enabled=runtime.is_main)
    if runtime.is_main:
        print(format_config(config))
        processes = f", {runtime.world_size} processes" if runtime.world_size > 1 else ""
        print(f"{stage}: training on {runtime.device} in {runtime.precision}{processes}, writing to {out_dir}")
    return runtime, log


def _runtime(device: str, precision: str) -> Runtime:
    try:
        return Runtime.start(device, precision)
    except ValueError as e:
        raise SetupError(str(e)) from None


def _fresh(runtime: Runtime, log: RunLog, config: AEConfig | SVRConfig) -> Progress:
    """A new run. Data randomness differs between processes, reproducibly."""
    if (Path(config.out_dir) / "last.pt").is_file():
        raise SetupError(f"{config.out_dir} already holds a run (last.pt); continue it with --resume, or choose another --out-dir")
    runtime.seed(config.seed + runtime.rank)
    log.start_fresh()
    return Progress()


def _restore(runtime: Runtime, log: RunLog, model: IMNet, optimizer, config, stage: str) -> Progress:
    """Continue from last.pt: weights, optimiser, progress and RNG states."""
    path = Path(config.out_dir) / "last.pt"
    if not path.is_file():
        raise SetupError(f"nothing to resume: {path} does not exist (start without --resume)")
    loaded, checkpoint = load_model(path, expected=model.config)
    if checkpoint.get("stage") != stage:
        raise SetupError(f"{path} is a {checkpoint.get('stage')} checkpoint; cannot resume {stage} training from it")
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(checkpoint["optimizer"])
    progress = Progress(**checkpoint["progress"])
    rng = checkpoint["rng"]
    if len(rng) == runtime.world_size:
        runtime.set_rng_state(rng[runtime.rank])
    else:
        if runtime.is_main:
            print(f"note: {path} was written by {len(rng)} processes, this run has {runtime.world_size}; "
                  "random streams are reseeded, so results will differ from an uninterrupted run")
        runtime.seed(config.seed + runtime.rank + 1000 * progress.epoch)
    log.purge_step = progress.step
    log.truncate(progress.epoch)
    if runtime.is_main:
        print(f"resumed from {path} after epoch {progress.epoch} (step {progress.step})")
    return progress


def _read_data(path: str | os.PathLike, keys: list[str], what: str) -> ShapeData:
    if not path:
        raise SetupError(f"no {what} file given")
    try:
        return load_shapes(path, keys, optional=("occupancy_64",))  # the validation lattice, where present
    except (OSError, ValueError, KeyError) as e:
        reason = e.args[0] if isinstance(e, KeyError) else e  # str(KeyError) adds quotes
        raise SetupError(f"cannot read the {what}: {reason}") from None


def _loader(dataset: Dataset, config, runtime: Runtime, epoch: int) -> DataLoader:
    """This process's share of `dataset`, shuffled anew each epoch (the same way in every process)."""
    sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=config.seed)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=config.batch_shapes, sampler=sampler, num_workers=config.workers,
                      pin_memory=runtime.device.type == "cuda")


def _steps_per_epoch(n_shapes: int, batch_shapes: int, runtime: Runtime) -> int:
    return math.ceil(math.ceil(n_shapes / runtime.world_size) / batch_shapes)


def _bar(loader: DataLoader, runtime: Runtime, desc: str):
    # A live bar on a terminal, a line every 10 s in a log; the epoch's result line comes from RunLog.
    return progress(loader, desc=desc, unit="step", disable=not runtime.is_main, leave=False)


def _adam(parameters: list[nn.Parameter], lr: float, beta1: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where PyTorch has one (CPU, CUDA): the same update in one pass over
    all parameters; on 2 CPU cores the per-tensor default spends ~10% of an IM-SVR step on it."""
    return torch.optim.Adam(parameters, lr=lr, betas=(beta1, 0.999), fused=device.type in ("cpu", "cuda"))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _optimizer_step(optimizer, loss: torch.Tensor, runtime: Runtime, progress: Progress, out_dir) -> float:
    """Backward and step; a NaN/inf loss stops the run before it reaches the weights."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Checked before the step, in every process alike (one device sync per step).
    value = runtime.mean(loss.detach().float()).item()
    if not math.isfinite(value):
        last = Path(out_dir) / "last.pt"
        where = (f"The last good checkpoint is {last}; try a lower --lr, then --resume" if last.is_file() else
                 f"No checkpoint was written yet (the first one comes at the end of epoch 1); try a lower --lr and start again")
        raise TrainingDiverged(f"the training loss became {value} at epoch {progress.epoch + 1}, step {progress.step + 1}; stopped. {where}")
    optimizer.step()
    progress.step += 1
    return value


def _end_epoch(runtime, log, model, optimizer, progress, config, stage, losses, lr, val, level, seconds, force_checkpoint):
    """Log the epoch, then checkpoint it: last.pt, and best.pt when validation IoU improved."""
    improved = val is not None and val["val_iou"] > progress.best_iou
    if improved:
        progress.best_iou = val["val_iou"]
    train_loss = float(np.mean(losses)) if losses else math.nan
    row = {"epoch": progress.epoch, "level": level if level is not None else "", "step": progress.step,
           "lr": lr, "train_loss": train_loss, "seconds": round(seconds, 2)}
    if val is not None:
        row.update({"val_loss": val.get("val_loss"), "val_iou": val["val_iou"], "train_iou": val.get("train_iou"),
                    "val_code_spread": val.get("code_spread"), "val_code_error_ratio": val.get("code_error_ratio"),
                    "val_self_match": val.get("self_match")})
    parts = [f"epoch {progress.epoch}"] + ([f"level {level}"] if level is not None else []) + [f"train loss {train_loss:.5f}"]
    if val is not None:
        parts.append(f"val IoU {val['val_iou']:.4f}")
        for key, label in (("train_iou", "train IoU"), ("code_spread", "code spread"),
                           ("code_error_ratio", "code error / spread"), ("self_match", "self-match")):
            if val.get(key) is not None:
                parts.append(f"{label} {val[key]:.3f}")
    log.row(row, progress.step, "  ".join(parts))
    if val is not None and val.get("previews"):
        log.images("val/depth_truth_vs_predicted", preview_image(val["previews"]), progress.step)
    if force_checkpoint or improved or progress.epoch % config.checkpoint_every == 0:
        _checkpoint(runtime, log, model, optimizer, progress, config, stage, best=improved)


def _checkpoint(runtime, log, model: IMNet, optimizer, progress: Progress, config, stage: str, best: bool) -> None:
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # cannot come from a NaN loss (checked per step), but an overflow could do it
        raise TrainingDiverged(f"non-finite weights in {bad[:3]} after epoch {progress.epoch}; "
                               f"{Path(config.out_dir) / 'last.pt'} was kept as it was")
    rng = runtime.gather(runtime.rng_state())
    if not runtime.is_main:
        return
    checkpoint = {
        "stage": stage,
        "model_config": config_to_dict(model.config),
        "config": {**config_to_dict(config), "precision_used": runtime.precision},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
        "rng": rng,
    }
    for name in (["last.pt", "best.pt"] if best else ["last.pt"]):
        save_checkpoint(Path(config.out_dir) / name, checkpoint)
        log.written.add(Path(config.out_dir) / name)


def _store_level(out_dir: Path, model: IMNet, data: ShapeData, runtime: Runtime, shapes: int) -> None:
    """Write `model`'s decoder level into last.pt and best.pt. The run's last epoch wrote last.pt
    from `model`; best.pt may hold an earlier epoch, which then gets a level of its own."""
    current = model.state_dict()
    for name in ("last.pt", "best.pt"):
        path = out_dir / name
        if not path.is_file():
            continue
        checkpoint = load_checkpoint(path)
        weights = checkpoint["model"]
        same = all(torch.equal(weights[key].cpu(), value.cpu()) for key, value in current.items() if key != "decoder.level" and key in weights)
        level = model.decoder.level.detach().cpu()
        if not same:
            other, _ = load_model(path)
            other.to(runtime.device)
            level = torch.tensor(calibrate_level(other, data, runtime, shapes)[0], dtype=torch.float32)
        weights["decoder.level"] = level.clone()
        save_checkpoint(path, {k: v for k, v in checkpoint.items() if k not in ("format", "version")})


def _summary(runtime, log, model, progress, stage, losses, diagnostics=None, stopped_early=False) -> RunSummary:
    """The run's summary; with `diagnostics` (a final validation), also writes diagnostics.json."""
    diagnostics = {k: v for k, v in (diagnostics or {}).items() if k != "previews"}
    if diagnostics and runtime.is_main:
        path = log.out_dir / "diagnostics.json"
        write_atomic(path, json.dumps({"stage": stage, **diagnostics}, indent=2) + "\n")
        log.written.add(path)
    if runtime.world_size > 1:
        digest = runtime.parameters_in_sync(model)
        if runtime.is_main:
            print(f"DDP: parameters identical in all {runtime.world_size} processes (sha256 {digest[:16]})")
    return RunSummary(
        stage=stage,
        out_dir=log.out_dir,
        epochs=progress.epoch,
        train_loss=float(np.mean(losses)) if losses else math.nan,
        best_iou=progress.best_iou if progress.best_iou >= 0 else None,
        diagnostics=diagnostics,
        written=sorted(log.written),
        stopped_early=stopped_early,
    )


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------
# Validation helpers: encodings, lattice IoU


def _rows(n: int, max_shapes: int) -> range:
    return range(min(n, max_shapes) if max_shapes else n)


def _chunks(rows: range, size: int):
    for start in range(0, len(rows), size):
        yield np.asarray(rows[start : start + size])


def _encode_voxels(model: IMNet, shapes: ShapeData, rows: range, runtime: Runtime, batch: int = 32) -> torch.Tensor:
    format_ = _voxel_memory_format(runtime.device)
    codes = []
    for chunk in _chunks(rows, batch):
        voxels = torch.from_numpy(np.asarray(shapes.voxels[chunk])).float()[:, None]
        with autocast(runtime.device, runtime.precision):
            codes.append(model.voxel_encoder(voxels.to(runtime.device).contiguous(memory_format=format_)).float())
    return torch.cat(codes)


def _lattice_ious(model, codes, shapes, rows, resolution, runtime, previews=False, keep=False):
    """Mean IoU of the decoder's occupancy for `codes` on the validation lattice, shape by shape.

    Returns (mean IoU, truth kind, preview pairs, (predicted [M, P], truth [M, P]) bool arrays or None
    without `keep`).
    The truth is `occupancy_64` on its `resolution`^3 sub-lattice when the file has it, else the
    max-pooled voxels at the same points (biased low; said in "truth").
    """
    truth_grids, kind = _truth_grids(shapes, rows, resolution)
    step = 64 // resolution
    points = lattice_points(64)[::step, ::step, ::step]
    if kind == "voxels_max_pooled":  # cell centres of the pooled grid
        axis = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution - 0.5
        points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    ious, pairs, kept = [], [], ([], [])
    for code, truth in zip(codes, truth_grids):
        predicted = _lattice_occupancy(model, code, points, resolution, runtime)
        union = (predicted | truth).sum()
        ious.append((predicted & truth).sum() / union if union else 1.0)
        if previews and len(pairs) < N_PREVIEW_SHAPES:
            pairs.append((truth, predicted))
        if keep:
            kept[0].append(predicted.reshape(-1))
            kept[1].append(truth.reshape(-1))
    mean = float(np.mean(ious)) if ious else math.nan
    return mean, kind, pairs, ((np.stack(kept[0]), np.stack(kept[1])) if keep else None)


def _truth_grids(shapes: ShapeData, rows: range, resolution: int) -> tuple[np.ndarray, str]:
    chunk = np.asarray(rows)
    step = 64 // resolution
    if shapes.occupancy_64 is not None:
        return np.asarray(shapes.occupancy_64[chunk])[:, ::step, ::step, ::step].astype(bool), "occupancy_64"
    voxels = torch.from_numpy(np.asarray(shapes.voxels[chunk])).float()
    if step > 1:
        voxels = F.avg_pool3d(voxels[:, None], step)[:, 0]
    return (voxels >= 0.5).numpy(), "voxels_max_pooled"


def _code_field(model: IMNet, code: torch.Tensor, runtime: Runtime):
    """The decoder's occupancy for one code [code_dim]: points float32 [N, 3] -> [N]."""
    terms = model.decoder.code_terms(code[None])

    def field(p: np.ndarray) -> np.ndarray:
        with autocast(runtime.device, runtime.precision):
            x = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)).to(runtime.device)[None]
            return model.decoder.forward_terms(x, terms)[0].float().cpu().numpy()

    return field


def _dense_values(field, points: np.ndarray) -> np.ndarray:
    """float [...]: `field` at every point of `points` [..., 3]."""
    flat = points.reshape(-1, 3)
    return np.concatenate([field(flat[i : i + 65536]) for i in range(0, len(flat), 65536)]).reshape(points.shape[:-1])


def _lattice_occupancy(model: IMNet, code: torch.Tensor, points: np.ndarray, resolution: int, runtime: Runtime) -> np.ndarray:
    """bool [R, R, R]: the decoder at the lattice `points` [R, R, R, 3], inside above its level."""
    field, level = _code_field(model, code, runtime), model.decoder.iso_level
    if resolution < 64:  # small: every lattice point
        return _dense_values(field, points) > level
    # 64^3: coarse-to-fine on the lattice, a grid whose cell centres are shifted by half a 256^3 voxel
    offset = np.float32(0.5 / GRID) if np.isclose(points[0, 0, 0, 0], -0.5 + 2.5 / GRID) else np.float32(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty field is a result here, not a warning
        values, _ = coarse_to_fine_grid(lambda p: field(p + offset), resolution, level=level)
    return values > level


@torch.no_grad()
def calibrate_level(model: IMNet, data: ShapeData, runtime: Runtime, max_shapes: int = 16) -> tuple[float, dict]:
    """The iso-level at which the decoder's surfaces lie nearest the true ones on training shapes.

    The decoder is evaluated at every point of the exact 64^3 lattice (`occupancy_64`) of the first
    `max_shapes` shapes (also far from the surface: a level also decides which stray blobs appear)
    and `imnet.calibration.choose_level` picks the level. Does not change the model. Returns
    (level, table); needs `occupancy_64` in `data`.
    """
    if data.occupancy_64 is None:
        raise ValueError(f"{data.path} has no occupancy_64 (the exact lattice): prepare it with data_prep to calibrate the level")
    model.eval()
    rows = _rows(len(data), max_shapes)
    codes = _encode_voxels(model, data, rows, runtime)
    points = lattice_points(64)
    truths = np.asarray(data.occupancy_64[np.asarray(rows)]).astype(bool)
    fields = [_dense_values(_code_field(model, code, runtime), points) for code in codes]
    return choose_level(fields, truths)


def _voxel_memory_format(device: torch.device) -> torch.memory_format:
    # Measured on CPU: 3D convolutions train 1.6x faster in channels-last (NDHWC) layout.
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def _image_memory_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
