"""IM-AE and IM-SVR training throughput: decoder points/s through the real loop vs bare; IM-SVR images/s.

    python bench/bench_train.py                   # CPU, about a minute and a half
    python bench/bench_train.py --device cuda     # the paper's batch: 32 shapes x 4096 points

All at the paper's widths (decoder 2048-1024-512-256-128-1, voxel encoder 32-64-128-256), forward +
backward, points per second counted as shapes x points per shape:

    decoder_raw    the decoder alone on random codes and points already on the device
    ae_step_raw    voxel encoder + decoder + Adam step, random voxels/points already on the device
    train_loop     `imnet.training.train_ae` on a generated data file (python -m data_prep synthetic):
                   DataLoader, host-to-device copies, NaN checks, progress bar, logging

Medians over steps (raw) and epochs (loop, first epoch left out), so a busy machine skews less.

And the IM-SVR step (ResNet-18 image encoder at its default 64x64, 16 views, channels-last, fused
Adam), in images per second: as the model builds it (the last stage's convolutions as matmuls,
`imnet.model.MatmulConv2d`) and with plain `nn.Conv2d` there (oneDNN on CPUs, cuDNN on GPUs).

train_loop / ae_step_raw is the cost of data loading and bookkeeping; train_loop / decoder_raw
also counts the voxel encoder, which the loop runs once per shape and step.
Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from imnet.config import AEConfig, ModelConfig
from imnet.datafile import open_datafile
from imnet.precision import resolve_device, resolve_precision
from imnet.model import IMNet, ImageEncoder, MatmulConv2d
from imnet.training import train_ae

RESULTS = Path(__file__).parent / "results" / "train.json"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def points_per_second(step, device: torch.device, points_per_step: int, steps: int) -> float:
    """Median over `steps` timed calls (after one warm-up), robust to a busy machine."""
    step()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return points_per_step / statistics.median(times)


def bench_raw(model: IMNet, device: torch.device, batch: int, points: int, steps: int, amp: bool) -> dict[str, float]:
    """Decoder alone, and the whole AE step, on random tensors already on the device."""
    torch.manual_seed(0)
    codes = torch.rand(batch, model.config.code_dim, device=device)
    xyz = torch.rand(batch, points, 3, device=device) - 0.5
    values = (torch.rand(batch, points, device=device) > 0.5).float()
    voxels = (torch.rand(batch, 1, 64, 64, 64, device=device) > 0.9).float()
    optimizer = torch.optim.Adam([*model.voxel_encoder.parameters(), *model.decoder.parameters()], lr=5e-5, betas=(0.5, 0.999))
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def decoder_step():
        with autocast():
            loss = F.mse_loss(model.decoder(codes, xyz).float(), values)
        loss.backward()

    def ae_step():
        with autocast():
            loss = F.mse_loss(model(voxels, xyz).float(), values)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    return {
        "decoder_raw": points_per_second(decoder_step, device, batch * points, steps),
        "ae_step_raw": points_per_second(ae_step, device, batch * points, steps),
    }


def bench_svr_step(device: torch.device, batch: int, steps: int, amp: bool) -> dict[str, float]:
    """Images per second of an IM-SVR step, the last stage's convolutions as matmuls and as plain nn.Conv2d."""
    result = {}
    for name in ("matmul_last_stage", "conv2d_last_stage"):
        torch.manual_seed(0)
        encoder = ImageEncoder(code_dim=128, image_size=64)
        if name == "conv2d_last_stage":  # MatmulConv2d is an nn.Conv2d: its own forward is the plain one
            for conv in encoder.net.layer4.modules():
                if isinstance(conv, MatmulConv2d):
                    conv.forward = torch.nn.Conv2d.forward.__get__(conv)
        encoder = encoder.to(device).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.Adam(encoder.parameters(), fused=device.type in ("cpu", "cuda"))
        images = torch.rand(batch, 1, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
        target = torch.randn(batch, 128, device=device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.mse_loss(encoder(images).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # a second warm-up: oneDNN picks its kernels on the first calls
        result[name] = points_per_second(step, device, batch, steps)
    return result


def bench_train_loop(data: Path, device: str, batch: int, points: int, epochs: int, workers: int, out_dir: Path) -> tuple[float, int]:
    """Points per second of a real `train_ae` run (median epoch after the first); also the number of shapes."""
    config = AEConfig(
        data=str(data), out_dir=str(out_dir), levels=(16,), epochs=(epochs,), batch_shapes=batch,
        points_per_shape=points, device=device, checkpoint_every=10**6, workers=workers,
    )
    train_ae(config)
    with open(out_dir / "metrics.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)][1:]  # the first epoch warms up
    with open_datafile(data) as shapes:
        n_shapes = len(shapes)
    return n_shapes * points / statistics.median(seconds), n_shapes


def prepare_data(count: int, out: Path) -> Path:
    """Generated chairs through the real data pipeline (voxels and points, no views)."""
    subprocess.run(
        [sys.executable, "-m", "data_prep", "synthetic", "--categories", "chair", "--count", str(count),
         "--no-render", "--train-fraction", "1.0", "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return out / "03001627_train.hdf5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    parser.add_argument("--data", help="an IM-NET data file to train on (default: generate --shapes chairs)")
    parser.add_argument("--shapes", type=int, help="generated shapes (default 8 on CPU, 64 on a GPU)")
    parser.add_argument("--batch-shapes", type=int, help="shapes per step (default 2 on CPU, 32 on a GPU)")
    parser.add_argument("--points-per-shape", type=int, help="points per shape (default 1024 on CPU, all 4096 on a GPU)")
    parser.add_argument("--raw-steps", type=int, help="timed steps of the raw benchmarks (default 10 on CPU, 50 on a GPU)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the training run; all but the first are timed (default 4)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training run (default 0)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    gpu = device.type != "cpu"
    shapes = args.shapes or (64 if gpu else 8)
    batch = args.batch_shapes or (32 if gpu else 2)
    points = args.points_per_shape or (4096 if gpu else 1024)
    raw_steps = args.raw_steps or (50 if gpu else 10)
    amp = resolve_precision(device, "auto") == "bf16"
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else prepare_data(shapes, tmp / "data")
        torch.manual_seed(0)
        raw = bench_raw(IMNet(ModelConfig()).to(device), device, batch, points, raw_steps, amp)
        svr = bench_svr_step(device, 16, 2 * raw_steps, amp)
        train, n_shapes = bench_train_loop(data, str(device), batch, points, args.epochs, args.workers, tmp / "run")

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "amp_bfloat16": amp,
        "model": "paper widths (ModelConfig defaults)",
        "shapes": n_shapes,
        "batch_shapes": batch,
        "points_per_shape": points,
        "points_per_second": {"decoder_raw": round(raw["decoder_raw"]), "ae_step_raw": round(raw["ae_step_raw"]),
                              "train_loop": round(train)},
        "train_loop_vs_decoder_raw": round(train / raw["decoder_raw"], 3),
        "train_loop_vs_ae_step_raw": round(train / raw["ae_step_raw"], 3),
        "svr_step_images_per_second": {name: round(value, 1) for name, value in svr.items()},
        "svr_step_speedup_of_matmul_last_stage": round(svr["matmul_last_stage"] / svr["conv2d_last_stage"], 3),
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
