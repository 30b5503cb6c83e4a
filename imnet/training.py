"""Training IM-NET, as in the paper: IM-AE first, then IM-SVR on the AE's codes.

    train_ae(config)       voxel encoder + decoder; MSE on point occupancy, progressively on the
                           16^3, 32^3 and 64^3 point sets, each level starting from the last one's weights
    extract_codes(...)     the trained voxel encoder's code of every shape, to a .npz file
    train_svr(config)      an image encoder regresses those codes (MSE); the decoder stays frozen

One model per data file: give a file of one category for the paper's per-category models, or a
file holding several categories for one model of all of them.

Every run writes to `config.out_dir`:
    last.pt         the latest checkpoint (atomic); `resume=True` continues from it exactly
    best.pt         the checkpoint with the best validation IoU (only with validation data)
    metrics.csv     one row per epoch: epoch, level, step, train_loss, val_loss, val_iou, seconds
    tensorboard/    the same scalars, plus depth images of a few validation shapes (truth | prediction)

Validation IoU: the decoder is evaluated at the cell centres of a `val_resolution`^3 grid and
compared with the 64^3 voxels pooled to that grid, a cell counting as inside when at least half of
its voxels are (`voxels_at_resolution`); averaged over the validation shapes. The validation loss
is the training loss on the validation shapes (IM-AE: all points of the current level; IM-SVR: code
MSE, when the codes file has validation codes).

A checkpoint holds the whole IMNet (an SVR checkpoint alone reconstructs from images: image encoder
+ the AE's decoder), the optimiser, the progress (level, epochs, steps, best IoU), every process's
RNG states and the config. Resuming restores all of them, so an interrupted run continues with the
same losses an uninterrupted one would have had.

Several processes (`torchrun --nproc_per_node N train.py ...`): DistributedDataParallel over gloo
(CPU) or NCCL (CUDA). Each process takes `batch_shapes` shapes per step, so the effective batch is
`batch_shapes * N`; the learning rate is not scaled for you. Only process 0 writes files.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from imnet.atomic import atomic_path
from imnet.checkpoint import load_model, save_checkpoint
from imnet.config import AEConfig, ModelConfig, SVRConfig, config_to_dict, format_config
from imnet.datafile import LEVELS, ShapeData
from imnet.datasets import AEDataset, SVRDataset, load_shapes, read_codes
from imnet.extract import dense_grid
from imnet.inference import decoder_field
from imnet.precision import resolve_device
from imnet.metrics import iou_occupancy
from imnet.model import IMNet

N_PREVIEW_SHAPES = 4  # validation shapes shown in TensorBoard
CSV_COLUMNS = ["epoch", "level", "step", "train_loss", "val_loss", "val_iou", "seconds"]


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
    level_epoch: int = 0  # IM-AE: epochs completed at that level (all of them: the next starts next)
    best_iou: float = -1.0  # best validation IoU so far (-1: none yet)


@dataclass
class RunSummary:
    """What a run did and wrote."""

    stage: str
    out_dir: Path
    epochs: int
    train_loss: float
    best_iou: float | None
    written: list[Path] = field(default_factory=list)
    stopped_early: bool = False  # stopped by `stop_after_epochs`, resumable

    def __str__(self) -> str:
        iou = f", best val IoU {self.best_iou:.4f}" if self.best_iou is not None else ""
        stopped = " (stopped early; continue with --resume)" if self.stopped_early else ""
        wrote = ", ".join(str(p) for p in self.written)
        return f"{self.stage}: {self.epochs} epochs, last train loss {self.train_loss:.6g}{iou}{stopped}; wrote {wrote}"


# ---------------------------------------------------------------------------------------------
# IM-AE


def train_ae(config: AEConfig, resume: bool = False, stop_after_epochs: int | None = None) -> RunSummary:
    """Train the IM-AE (voxel encoder + decoder) progressively over the point-sampling levels.

    Args:
        config: the run; `config.epochs[i]` epochs are spent at level `config.levels[i]`.
        resume: continue from `out_dir/last.pt` (model, optimiser, level, epoch, RNG states).
        stop_after_epochs: stop (resumably) after this many epochs in this call, e.g. to fit a
            cluster's time slot.

    Returns:
        A RunSummary; checkpoints and logs are in `config.out_dir`.
    """
    _check_levels(config)
    with Run(config, "ae") as run:
        keys = ["voxels", *(f"{kind}_{level}" for level in config.levels for kind in ("points", "values"))]
        train_data = _read_data(config.data, keys, "training data")
        val_data = _read_data(config.val_data, keys, "validation data") if config.val_data else None

        torch.manual_seed(config.seed)  # the same initial weights in every process
        model = IMNet(config.model).to(run.device)
        model.image_encoder.requires_grad_(False)  # trained later, by IM-SVR
        optimizer = torch.optim.Adam(_trainable(model), lr=config.lr, betas=(config.beta1, 0.999))
        progress = run.restore(model, optimizer, config.model) if resume else run.start(config.seed)
        net = run.distribute(model)

        def loss_fn(batch: dict) -> torch.Tensor:
            voxels, points, values = (batch[k].to(run.device, non_blocking=True) for k in ("voxels", "points", "values"))
            return occupancy_loss(net(voxels, points), values)

        def val_loss_fn(codes: torch.Tensor, batch: dict) -> torch.Tensor:
            points, values = batch["points"].to(run.device), batch["values"].to(run.device)
            return ((model.decoder(codes, points).float() - values) ** 2).mean(1)

        for level_index in range(progress.level_index, len(config.levels)):
            if level_index != progress.level_index:  # the next level starts from the weights so far
                progress.level_index, progress.level_epoch = level_index, 0
            level, epochs = config.levels[level_index], config.epochs[level_index]
            if progress.level_epoch >= epochs:
                continue
            train_set = AEDataset(train_data, level, config.points_per_shape)
            val_set = AEDataset(val_data, level) if val_data is not None else None
            for _ in range(progress.level_epoch, epochs):
                model.train()
                model.image_encoder.eval()
                loader = run.loader(train_set, config.batch_shapes, progress.epoch)
                loss = run.train_epoch(loss_fn, loader, optimizer, progress, f"level {level} epoch {progress.level_epoch + 1}/{epochs}")
                progress.level_epoch += 1
                val = None
                if val_set is not None and progress.epoch % config.val_every == 0:
                    val = run.validate(model, lambda b: model.voxel_encoder(b["voxels"].to(run.device)),
                                       val_set, val_loss_fn, torch.from_numpy(val_data.voxels))
                stop = run.should_stop(stop_after_epochs)
                run.end_epoch(model, optimizer, progress, loss, val, level, force_checkpoint=stop or progress.level_epoch == epochs)
                if stop:
                    return run.summary(model, progress, stopped_early=True)
        return run.summary(model, progress)


def occupancy_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and true occupancy (the paper's loss)."""
    return F.mse_loss(predicted.float(), target)


def _check_levels(config: AEConfig) -> None:
    if not config.levels or any(level not in LEVELS for level in config.levels):
        raise SetupError(f"levels must be some of {LEVELS}, got {config.levels}")
    if list(config.levels) != sorted(set(config.levels)):
        raise SetupError(f"levels must increase (coarse to fine), got {config.levels}")
    if len(config.epochs) != len(config.levels):
        raise SetupError(f"give one epoch count per level: levels {config.levels}, epochs {config.epochs}")


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

    Returns:
        `out`.
    """
    device = _resolve_device(device)
    model, _ = load_model(checkpoint, stage="ae")
    encoder = model.voxel_encoder.to(device).eval()  # batch norm with its running statistics
    arrays: dict[str, np.ndarray] = {"checkpoint": np.array(str(checkpoint))}
    for split, path in (("train", data), ("val", val_data)):
        if not path:
            continue
        shapes = _read_data(path, ["voxels"], f"{split} data")
        voxels = torch.from_numpy(shapes.voxels)
        codes = [
            encoder(voxels[i : i + batch_shapes, None].to(device).float()).float().cpu()
            for i in range(0, len(voxels), batch_shapes)
        ]
        arrays[f"{split}_codes"] = torch.cat(codes).numpy()
        arrays[f"{split}_names"] = np.array(shapes.names or [""] * len(voxels), dtype=str)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(out)


# ---------------------------------------------------------------------------------------------
# IM-SVR


def train_svr(config: SVRConfig, resume: bool = False, stop_after_epochs: int | None = None) -> RunSummary:
    """Train the image encoder to regress the IM-AE codes of the shapes from their rendered views.

    The model (and its frozen decoder and voxel encoder) comes from `config.ae_checkpoint`; the
    targets from `config.codes` (`extract_codes`). Each epoch shows every shape once, from a random
    one of its 24 views; validation uses view `config.val_view`.

    Args and returns: as `train_ae`.
    """
    with Run(config, "svr") as run:
        train_data = _read_data(config.data, ["pixels"], "training data")
        val_data = _read_data(config.val_data, ["pixels", "voxels"], "validation data") if config.val_data else None
        if not config.ae_checkpoint:
            raise SetupError("IM-SVR starts from a trained IM-AE: give --ae-checkpoint")
        model, _ = load_model(config.ae_checkpoint, stage="ae")
        if not config.codes:
            raise SetupError("IM-SVR regresses the AE's codes: give --codes (written by `python train.py codes`)")
        try:
            codes = read_codes(config.codes, "train", train_data)
            val_codes = read_codes(config.codes, "val", val_data, required=False) if val_data is not None else None
        except (OSError, ValueError) as e:
            raise SetupError(str(e)) from None
        if codes.shape[1] != model.config.code_dim:
            raise SetupError(f"{config.codes} holds {codes.shape[1]}-d codes; {config.ae_checkpoint} makes {model.config.code_dim}-d")
        if config.pretrained_image_encoder and not resume:
            try:
                model.image_encoder.load_imagenet_weights(config.pretrained_image_encoder)
            except (OSError, ValueError) as e:
                raise SetupError(str(e)) from None
        model.to(run.device)
        model.requires_grad_(False)
        model.image_encoder.requires_grad_(True)  # the decoder stays the AE's
        optimizer = torch.optim.Adam(_trainable(model), lr=config.lr, betas=(config.beta1, 0.999))
        progress = run.restore(model, optimizer, model.config) if resume else run.start(config.seed)
        net = run.distribute(model.image_encoder)

        train_set = SVRDataset(train_data, codes, view=None, augment=config.augment, train_views=config.train_views)
        val_set = SVRDataset(val_data, val_codes, view=config.val_view) if val_data is not None else None

        def loss_fn(batch: dict) -> torch.Tensor:
            images, targets = batch["image"].to(run.device, non_blocking=True), batch["code"].to(run.device, non_blocking=True)
            return F.mse_loss(net(images).float(), targets)

        def val_loss_fn(codes: torch.Tensor, batch: dict) -> torch.Tensor | None:
            if val_codes is None:
                return None
            return ((codes.float() - batch["code"].to(run.device)) ** 2).mean(1)

        while progress.epoch < config.epochs:
            model.eval()
            model.image_encoder.train()
            loader = run.loader(train_set, config.batch_shapes, progress.epoch)
            loss = run.train_epoch(loss_fn, loader, optimizer, progress, f"epoch {progress.epoch + 1}/{config.epochs}")
            val = None
            if val_set is not None and progress.epoch % config.val_every == 0:
                val = run.validate(model, lambda b: model.image_encoder(b["image"].to(run.device)),
                                   val_set, val_loss_fn, torch.from_numpy(val_data.voxels))
            stop = run.should_stop(stop_after_epochs)
            run.end_epoch(model, optimizer, progress, loss, val, level=None, force_checkpoint=stop or progress.epoch == config.epochs)
            if stop:
                return run.summary(model, progress, stopped_early=True)
        return run.summary(model, progress)


# ---------------------------------------------------------------------------------------------
# What every run shares


class Run:
    """Device, processes, data loading, the epoch loop's bookkeeping, checkpoints and logs of a run.

    Use as a context manager: it joins the process group under torchrun and leaves it at the end.
    """

    def __init__(self, config: AEConfig | SVRConfig, stage: str):
        if config.val_resolution < 1 or 64 % config.val_resolution:
            raise SetupError(f"val_resolution must divide the 64^3 voxel grid (1, 2, 4, ..., 64), got {config.val_resolution}")
        if config.batch_shapes < 1 or config.val_every < 1 or config.checkpoint_every < 1:
            raise SetupError("batch_shapes, val_every and checkpoint_every must be at least 1")
        self.config = config
        self.stage = stage
        self.out_dir = Path(config.out_dir)
        self.rank, self.world_size, self.device = _init_processes(config.device)
        self.is_main = self.rank == 0
        self.amp = config.amp and self.device.type == "cuda"  # bfloat16 autocast, CUDA only
        self.epochs_this_call = 0
        self.last_loss = math.nan
        self.writer = None
        self.written: set[Path] = set()

    def __enter__(self) -> Run:
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            print(format_config(self.config))
            processes = f", {self.world_size} processes" if self.world_size > 1 else ""
            print(f"{self.stage}: training on {self.device}{processes}, writing to {self.out_dir}")
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # Data ------------------------------------------------------------------------------------

    def loader(self, dataset: Dataset, batch_shapes: int, epoch: int) -> DataLoader:
        """This process's share of `dataset`, shuffled anew each epoch (the same way in every process)."""
        sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.config.seed)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch_shapes, sampler=sampler, num_workers=self.config.workers,
                          pin_memory=self.device.type == "cuda")

    # Training ----------------------------------------------------------------------------------

    def start(self, seed: int) -> Progress:
        """A fresh run. Data randomness differs between processes, reproducibly."""
        if (self.out_dir / "last.pt").is_file():
            raise SetupError(
                f"{self.out_dir} already holds a run (last.pt); continue it with --resume, "
                "or choose another --out-dir"
            )
        _seed_everything(seed + self.rank)
        if self.is_main:
            (self.out_dir / "metrics.csv").unlink(missing_ok=True)
        return Progress()

    def restore(self, model: IMNet, optimizer: torch.optim.Optimizer, expected: ModelConfig) -> Progress:
        """Continue from last.pt: weights, optimiser, progress and RNG states."""
        path = self.out_dir / "last.pt"
        if not path.is_file():
            raise SetupError(f"nothing to resume: {path} does not exist (start without --resume)")
        loaded, checkpoint = load_model(path, expected=expected)
        if checkpoint.get("stage") != self.stage:
            raise SetupError(f"{path} is a {checkpoint.get('stage')} checkpoint; cannot resume {self.stage} training from it")
        model.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng = checkpoint["rng"]
        if len(rng) == self.world_size:
            _set_rng_state(rng[self.rank], self.device)
        else:
            if self.is_main:
                print(f"note: {path} was written by {len(rng)} processes, this run has {self.world_size}; "
                      "random streams are reseeded, so results will differ from an uninterrupted run")
            _seed_everything(self.config.seed + self.rank + 1000 * checkpoint["progress"]["epoch"])
        progress = Progress(**checkpoint["progress"])
        if self.is_main:
            _truncate_csv(self.out_dir / "metrics.csv", progress.epoch)
            print(f"resumed from {path} after epoch {progress.epoch} (step {progress.step})")
        return progress

    def distribute(self, module: nn.Module) -> nn.Module:
        """`module` wrapped for data parallelism when there are several processes."""
        if self.world_size == 1:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def train_epoch(
        self,
        loss_fn: Callable[[dict], torch.Tensor],
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        progress: Progress,
        desc: str,
    ) -> float:
        """One pass over `loader`; returns the mean loss (over steps and processes)."""
        self.epoch_start = time.perf_counter()
        total, steps = 0.0, 0
        bar = tqdm(loader, desc=desc, disable=not self.is_main, leave=False, dynamic_ncols=True)
        for batch in bar:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Checked before the step, in every process alike, so no NaN ever reaches the weights.
            # (One device sync per step: negligible next to a step of the paper-sized decoder.)
            value = self._mean_over_processes(loss.detach().float()).item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"the training loss became {value} at epoch {progress.epoch + 1}, step {progress.step + 1}; "
                    f"stopped. The last good checkpoint is {self.out_dir / 'last.pt'}. Try a lower --lr "
                    "or --no-amp, then --resume"
                )
            optimizer.step()
            progress.step += 1
            total += value
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.5f}")
        progress.epoch += 1
        self.epochs_this_call += 1
        self.last_loss = total / max(steps, 1)
        return self.last_loss

    @torch.no_grad()
    def validate(
        self,
        model: IMNet,
        encode: Callable[[dict], torch.Tensor],
        dataset: Dataset,
        loss_fn: Callable[[torch.Tensor, dict], torch.Tensor | None],
        voxels: torch.Tensor,
    ) -> dict[str, Any]:
        """Validation loss and occupancy IoU, each process taking every world_size-th shape.

        Returns {"loss": float or None, "iou": float, "previews": [(truth, predicted) bool grids]}.
        """
        model.eval()
        resolution = self.config.val_resolution
        shard = Subset(dataset, range(self.rank, len(dataset), self.world_size))
        sums = torch.zeros(4, dtype=torch.float64)  # loss sum, shapes with a loss, IoU sum, shapes with an IoU
        previews = []
        for batch in DataLoader(shard, batch_size=self.config.batch_shapes):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                codes = encode(batch).float()
                losses = loss_fn(codes, batch)
            if losses is not None:
                sums[0] += losses.double().sum().cpu()
                sums[1] += len(losses)
            truth = voxels_at_resolution(voxels[batch["index"]], resolution).numpy()
            for code, true_grid in zip(codes, truth):
                predicted = dense_grid(decoder_field(model.decoder, code), resolution) >= 0.5
                iou = iou_occupancy(predicted, true_grid)
                if not math.isnan(iou):
                    sums[2] += iou
                    sums[3] += 1
                if len(previews) < N_PREVIEW_SHAPES:
                    previews.append((true_grid, predicted))
        sums = self._sum_over_processes(sums)
        return {
            "loss": (sums[0] / sums[1]).item() if sums[1] else None,
            "iou": (sums[2] / sums[3]).item() if sums[3] else math.nan,
            "previews": previews,
        }

    def end_epoch(
        self,
        model: IMNet,
        optimizer: torch.optim.Optimizer,
        progress: Progress,
        train_loss: float,
        val: dict | None,
        level: int | None,
        force_checkpoint: bool = False,
    ) -> None:
        """Log the epoch, then checkpoint it: last.pt, and best.pt when validation IoU improved."""
        improved = val is not None and val["iou"] > progress.best_iou
        if improved:
            progress.best_iou = val["iou"]
        if self.is_main:
            self._log(progress, train_loss, val, level)
        if force_checkpoint or improved or progress.epoch % self.config.checkpoint_every == 0:
            self._checkpoint(model, optimizer, progress, best=improved)

    def should_stop(self, stop_after_epochs: int | None) -> bool:
        """Whether this call has done the epochs it was asked for."""
        return stop_after_epochs is not None and self.epochs_this_call >= stop_after_epochs

    def summary(self, model: nn.Module, progress: Progress, stopped_early: bool = False) -> RunSummary:
        if self.world_size > 1:
            digest = _parameter_digest_in_sync(model)
            if self.is_main:
                print(f"DDP: parameters identical in all {self.world_size} processes (sha256 {digest[:16]})")
        return RunSummary(
            stage=self.stage,
            out_dir=self.out_dir,
            epochs=progress.epoch,
            train_loss=self.last_loss,
            best_iou=progress.best_iou if progress.best_iou >= 0 else None,
            written=sorted(self.written),
            stopped_early=stopped_early,
        )

    # Checkpoints and logs ----------------------------------------------------------------------

    def _checkpoint(self, model: IMNet, optimizer: torch.optim.Optimizer, progress: Progress, best: bool) -> None:
        bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # cannot come from a NaN loss (checked per step), but an overflow could do it
            raise TrainingDiverged(f"non-finite weights in {bad[:3]} after epoch {progress.epoch}; "
                                   f"{self.out_dir / 'last.pt'} was kept as it was")
        rng = self._gather(_rng_state(self.device))
        if not self.is_main:
            return
        checkpoint = {
            "stage": self.stage,
            "model_config": config_to_dict(model.config),
            "config": config_to_dict(self.config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "progress": asdict(progress),
            "rng": rng,
        }
        names = ["last.pt", "best.pt"] if best else ["last.pt"]
        for name in names:
            save_checkpoint(self.out_dir / name, checkpoint)
            self.written.add(self.out_dir / name)

    def _log(self, progress: Progress, train_loss: float, val: dict | None, level: int | None) -> None:
        seconds = time.perf_counter() - self.epoch_start
        row = {
            "epoch": progress.epoch,
            "level": level if level is not None else "",
            "step": progress.step,
            "train_loss": f"{train_loss:.9g}",
            "val_loss": f"{val['loss']:.9g}" if val and val["loss"] is not None else "",
            "val_iou": f"{val['iou']:.6f}" if val else "",
            "seconds": f"{seconds:.2f}",
        }
        path = self.out_dir / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            out = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            if new:
                out.writeheader()
            out.writerow(row)
        self.written.add(path)

        writer = self._writer(progress.step)
        writer.add_scalar("train/loss", train_loss, progress.step)
        if level is not None:
            writer.add_scalar("train/level", level, progress.step)
        if val:
            writer.add_scalar("val/iou", val["iou"], progress.step)
            if val["loss"] is not None:
                writer.add_scalar("val/loss", val["loss"], progress.step)
            if val["previews"]:
                writer.add_image("val/depth_truth_vs_predicted", preview_image(val["previews"]), progress.step)
        writer.flush()

        parts = [f"epoch {progress.epoch}"] + ([f"level {level}"] if level is not None else [])
        parts.append(f"train loss {train_loss:.6f}")
        if val:
            parts += ([f"val loss {val['loss']:.6f}"] if val["loss"] is not None else []) + [f"val IoU {val['iou']:.4f}"]
        tqdm.write("  ".join(parts))

    def _writer(self, step: int):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            # purge_step drops events a crashed run logged after its last checkpoint.
            self.writer = SummaryWriter(self.out_dir / "tensorboard", purge_step=step)
            self.written.add(self.out_dir / "tensorboard")
        return self.writer

    # Process group helpers ---------------------------------------------------------------------

    def _mean_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(value)  # a sum: gloo has no average
            value = value / self.world_size
        return value

    def _sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            on_device = value.to(self.device)
            dist.all_reduce(on_device)
            value = on_device.cpu()
        return value

    def _gather(self, obj: Any) -> list:
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def voxels_at_resolution(voxels: torch.Tensor, resolution: int) -> torch.Tensor:
    """Ground-truth occupancy on a coarser grid: 0/1 voxels [B, 64, 64, 64] -> bool [B, R, R, R].

    A cell is inside when at least half of its voxels are: what a field sampled at the cell centre
    should say. (Max-pooling instead would mark every cell that a thin part touches, which no field
    sampled at cell centres can match.)
    """
    size = voxels.shape[-1]
    if resolution < 1 or size % resolution:
        raise ValueError(f"resolution must divide the voxel grid size {size}, got {resolution}")
    factor = size // resolution
    if factor == 1:
        return voxels.bool()
    return F.avg_pool3d(voxels[:, None].float(), factor)[:, 0] >= 0.5


def preview_image(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Depth images of (truth, predicted) occupancy grids side by side, one shape per row.

    Grids are bool [R, R, R] indexed [x, y, z]; the view looks along the z axis, y up.
    Returns float32 [1, rows * R, 2 * R] in [0, 1] (CHW, for TensorBoard).
    """
    rows = []
    for pair in pairs:
        row = []
        for grid in pair:
            hit = grid.any(axis=2)
            depth = np.argmax(grid[:, :, ::-1], axis=2)  # cells from the +z side to the first inside one
            shade = np.where(hit, 1 - 0.8 * depth / grid.shape[2], 0.0)
            row.append(shade.T[::-1])  # rows y (up first), columns x
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)[None].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Devices, processes, randomness


def _init_processes(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the process group under torchrun."""
    device = _resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise SetupError(f"several processes need --device cpu or cuda, not {device.type}")
    return rank, world_size, device


def _resolve_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as e:
        raise SetupError(str(e)) from None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":  # this process's GPU only: touching the others would start a context on each
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def _parameter_digest_in_sync(model: nn.Module) -> str:
    """sha256 of the parameters, checked to be the same in every process."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP replicas diverged: parameter digests differ between processes: {digests}")
    return digests[0]


# ---------------------------------------------------------------------------------------------
# Files


def _read_data(path: str | os.PathLike, keys: list[str], what: str) -> ShapeData:
    if not path:
        raise SetupError(f"no {what} file given")
    try:
        return load_shapes(path, keys)
    except (OSError, ValueError, KeyError) as e:
        reason = e.args[0] if isinstance(e, KeyError) else e  # str(KeyError) adds quotes
        raise SetupError(f"cannot read the {what}: {reason}") from None


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _truncate_csv(path: Path, epoch: int) -> None:
    """Drop rows logged after `epoch` (by a run that crashed before its next checkpoint)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= epoch]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        out.writeheader()
        out.writerows(rows)
