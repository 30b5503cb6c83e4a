"""Fit a decoder of the paper's widths to one generated chair, for the extraction benchmark.

    python bench/fit_paper_decoder.py --out /tmp/paper_decoder.pt [--steps 100]

The extraction benchmark needs a decoder of the paper's size (2048-1024-512-256-128, code 128)
whose field looks trained: sharp where the surface is, saturated elsewhere, thin legs. Training
IM-AE for that takes hours on a CPU, so this fits only the decoder, for one fixed code, to one
chair made by ``python -m data_prep synthetic`` (its 16384 near-surface points and 16384 uniform
points labelled by its 64^3 voxels). The decoder sees the point scaled by 8 (`--point-octaves 0
--point-scale 8`, the choice docs/training.md gives for a decoder to certify: Fourier features
bound loosely) and learns with BCE on logits; with the paper's raw coordinates and MSE a few hundred
steps leave the field empty. Deterministic from --seed; about two minutes on 2 cores.
Writes {"decoder": state_dict, "code": [128], "widths", "code_dim", "point_scale", "steps", "loss"}.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from imnet.datafile import open_datafile  # noqa: E402
from imnet.model import Decoder  # noqa: E402

PAPER_WIDTHS = (2048, 1024, 512, 256, 128)
POINT_SCALE = 8.0


def training_points(data_file: Path, shape: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    data = open_datafile(data_file)
    near = np.asarray(data.points(64, shape), dtype=np.float32)
    near_values = np.asarray(data.values(64, shape), dtype=np.float32)
    voxels = np.asarray(data.voxels[shape])  # [64, 64, 64], 1 inside
    uniform = rng.uniform(-0.5, 0.5, (len(near), 3)).astype(np.float32)
    index = np.clip(((uniform + 0.5) * 64).astype(int), 0, 63)
    uniform_values = voxels[index[:, 0], index[:, 1], index[:, 2]].astype(np.float32)
    return np.concatenate([near, uniform]), np.concatenate([near_values, uniform_values])


def fit(data_file: Path, steps: int, points_per_step: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    points, values = training_points(data_file, 0, rng)
    decoder = Decoder(128, PAPER_WIDTHS, point_scale=POINT_SCALE)
    code = torch.rand(1, 128)  # like the encoders' sigmoid codes
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    start, loss = time.perf_counter(), None
    for step in range(steps):
        pick = rng.integers(len(points), size=points_per_step)
        logits = decoder.logits(code, torch.from_numpy(points[pick])[None])[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(values[pick]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    return {"decoder": decoder.state_dict(), "code": code[0], "widths": PAPER_WIDTHS, "code_dim": 128, "point_scale": POINT_SCALE,
            "steps": steps, "loss": loss.item()}


def load_fitted(path: Path) -> tuple[Decoder, torch.Tensor]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    decoder = Decoder(saved["code_dim"], tuple(saved["widths"]), point_scale=saved.get("point_scale", 1.0))
    decoder.load_state_dict(saved["decoder"])
    return decoder.eval(), saved["code"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the fitted decoder (.pt)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder of `python -m data_prep synthetic --categories chair` output (default: "
                        "generated next to --out)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (the paper: 5e-5; larger to fit in minutes)")
    parser.add_argument("--points-per-step", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_dir = args.data_dir or args.out.parent / "chairs"
    data_file = data_dir / "03001627_train.hdf5"
    if not data_file.exists():
        subprocess.run([sys.executable, "-m", "data_prep", "synthetic", "--categories", "chair", "--count", "32",
                        "--no-render", "--out", str(data_dir)], check=True, cwd=ROOT)
    result = fit(data_file, args.steps, args.points_per_step, args.lr, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, args.out)
    print(f"-> {args.out} (loss {result['loss']:.4f})")


if __name__ == "__main__":
    main()
