"""How fast this machine trains IM-NET: optimiser steps per second of both stages, measured.

    speed = training_speed(ModelConfig(decoder_widths=(256, 256, 128, 64, 32)))
    speed.ae_steps_per_second, speed.svr_steps_per_second

Each stage's step (the same modules, memory formats, precision policy, loss and fused Adam as
`imnet.training`, whose helpers it borrows) is timed on random inputs of the stage's batch shape,
after a few warm-up steps (the first calls pick kernels). Data loading is not included: the
training loops read from memory. `make demo` uses it to size its data to the machine: at three
times the training steps per minute, twice the training chairs measured far better, while at the
2-core reference speed they did not (docs/training.md, D3). With the epochs a run needs, it also
says how many minutes that run will take here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imnet.config import AEConfig, ModelConfig, SVRConfig
from imnet.model import IMNet
from imnet.precision import autocast
from imnet.runtime import Runtime
from imnet.training import _adam, _image_memory_format, _voxel_memory_format, occupancy_loss

__all__ = ["TrainingSpeed", "training_speed"]


@dataclass
class TrainingSpeed:
    """Measured optimiser steps per second of each stage, and what they were measured with."""

    ae_steps_per_second: float
    svr_steps_per_second: float
    device: str
    precision: str
    ae_batch: str  # e.g. "4 shapes x 512 points"
    svr_batch: str  # e.g. "16 views at 64x64"

    def __str__(self) -> str:
        return (f"ae_steps_per_second={self.ae_steps_per_second:.2f} svr_steps_per_second={self.svr_steps_per_second:.2f} "
                f"device={self.device} precision={self.precision} (IM-AE {self.ae_batch}; IM-SVR {self.svr_batch})")


def training_speed(
    model: ModelConfig | None = None,
    *,
    ae: AEConfig | None = None,
    svr: SVRConfig | None = None,
    device: str = "auto",
    precision: str = "auto",
    seconds: float = 2.0,
    warmup_steps: int = 3,
) -> TrainingSpeed:
    """Steps per second of an IM-AE step (`ae.batch_shapes` x `ae.points_per_shape` points, 64^3
    voxels) and an IM-SVR step (`svr.batch_shapes` views at `svr.image_size`) of `model`, each timed
    for about `seconds` after `warmup_steps` untimed ones. `device` and `precision` as in training
    ("auto": imnet.precision's choice, which the result names)."""
    model = model or ModelConfig()
    ae, svr = ae or AEConfig(), svr or SVRConfig()
    if not seconds > 0 or warmup_steps < 0:
        raise ValueError(f"seconds must be > 0 and warmup_steps >= 0, got {seconds} and {warmup_steps}")
    runtime = Runtime.start(device, precision)
    dev = runtime.device
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = IMNet(dataclasses.replace(model, image_size=svr.image_size)).to(dev)

    voxel_format = _voxel_memory_format(dev)
    net.voxel_encoder.to(memory_format=voxel_format)
    points_per_shape = ae.points_per_shape or 4096
    voxels = (torch.rand(ae.batch_shapes, 1, 64, 64, 64, generator=generator) < 0.1).float()
    voxels = voxels.to(dev).contiguous(memory_format=voxel_format)
    points = (torch.rand(ae.batch_shapes, points_per_shape, 3, generator=generator) - 0.5).to(dev)
    values = (torch.rand(ae.batch_shapes, points_per_shape, generator=generator) < 0.3).float().to(dev)
    ae_params = [*net.voxel_encoder.parameters(), *net.decoder.parameters()]
    ae_optimizer = _adam(ae_params, ae.lr, ae.beta1, dev)

    def ae_step() -> None:
        with autocast(dev, runtime.precision):
            loss = occupancy_loss(net(voxels, points), values, ae.loss)
        ae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ae_optimizer.step()

    image_format = _image_memory_format(dev)
    net.image_encoder.to(memory_format=image_format)
    images = torch.rand(svr.batch_shapes, 1, 128, 128, generator=generator).to(dev).contiguous(memory_format=image_format)
    codes = torch.randn(svr.batch_shapes, model.code_dim, generator=generator).to(dev)
    svr_optimizer = _adam(list(net.image_encoder.parameters()), svr.lr, svr.beta1, dev)

    def svr_step() -> None:
        with autocast(dev, runtime.precision):
            loss = F.mse_loss(net.image_encoder(images).float(), codes)
        svr_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        svr_optimizer.step()

    net.train()
    return TrainingSpeed(
        ae_steps_per_second=_steps_per_second(ae_step, dev, seconds, warmup_steps),
        svr_steps_per_second=_steps_per_second(svr_step, dev, seconds, warmup_steps),
        device=str(dev),
        precision=runtime.precision,
        ae_batch=f"{ae.batch_shapes} shapes x {points_per_shape} points",
        svr_batch=f"{svr.batch_shapes} views at {svr.image_size}x{svr.image_size}",
    )


def _steps_per_second(step, device: torch.device, seconds: float, warmup_steps: int) -> float:
    for _ in range(warmup_steps):
        step()
    _synchronize(device)
    start, steps = time.perf_counter(), 0
    while True:
        step()
        steps += 1
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps / elapsed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
