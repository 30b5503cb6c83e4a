"""Shared fixtures.

`tiny_checkpoint`: there is no trained model in the repository, so tests that need a whole
image -> mesh pipeline get a tiny IM-NET whose decoder was fitted, for any shape code, to one
chair-like union of boxes. Whatever image it is shown, it reconstructs that chair: a legitimate
stand-in wherever the test is about the plumbing around the network (CLI, web app), not about
what the network learned.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from imnet.checkpoint import save_checkpoint
from imnet.config import ModelConfig, config_to_dict
from imnet.model import IMNet

def load_train_cli():
    """train.py as a module (it is a program, not part of the package), for calling `main(argv)`."""
    spec = importlib.util.spec_from_file_location("train_cli", Path(__file__).resolve().parents[1] / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Plain scaled coordinates, not the default Fourier features: a piecewise-linear decoder, which the
# certified-extraction tests bound tightly.
TINY_MODEL = ModelConfig(code_dim=16, decoder_widths=(64, 64, 32), voxel_channels=(4, 4, 8, 8), point_octaves=0, point_scale=8.0)

# Axis-aligned boxes (min corner, max corner) in object space, oriented like ShapeNetCore v2's chairs
# (y up, backrest towards +z, front towards -z): a seat, a backrest, four legs.
CHAIR_BOXES = np.array(
    [
        [[-0.25, -0.05, -0.25], [0.25, 0.03, 0.25]],
        [[-0.25, 0.03, 0.17], [0.25, 0.45, 0.25]],
        *[
            [[x, -0.45, z], [x + 0.08, -0.05, z + 0.08]]
            for x in (-0.25, 0.17)
            for z in (-0.25, 0.17)
        ],
    ],
    dtype=np.float32,
)


def chair_occupancy(points: np.ndarray) -> np.ndarray:
    """Occupancy of the box chair: float [N, 3] -> float32 [N], 1 inside."""
    inside = (points[:, None] >= CHAIR_BOXES[None, :, 0]) & (points[:, None] <= CHAIR_BOXES[None, :, 1])
    return inside.all(axis=2).any(axis=1).astype(np.float32)


def fit_tiny_chair_model(steps: int = 500, points_per_step: int = 2048, seed: int = 0) -> IMNet:
    """A TINY_MODEL whose decoder outputs the box chair, whatever the shape code."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small run many times slower when threads must sync
    model = IMNet(TINY_MODEL)
    # Zero, frozen code weights make the field exactly independent of the code, so one code suffices.
    for layer in model.decoder.layers:
        if layer.code is not None:
            torch.nn.init.zeros_(layer.code.weight)
            layer.code.weight.requires_grad_(False)
    parameters = [p for p in model.decoder.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    code = torch.zeros(1, TINY_MODEL.code_dim)
    n = points_per_step // 2
    try:
        for _ in range(steps):
            # Half the points uniform, half close to the boxes' faces, where the decoder must be sharp.
            uniform = rng.uniform(-0.5, 0.5, (n, 3))
            box = CHAIR_BOXES[rng.integers(len(CHAIR_BOXES), size=n)]
            near = rng.uniform(box[:, 0], box[:, 1])
            axis, side = rng.integers(3, size=n), rng.integers(2, size=n)
            near[np.arange(n), axis] = box[np.arange(n), side, axis] + rng.normal(0.0, 0.02, n)
            points = np.clip(np.concatenate([uniform, near]), -0.5, 0.5).astype(np.float32)
            prediction = model.decoder(code, torch.from_numpy(points)[None])[0]
            loss = torch.nn.functional.mse_loss(prediction, torch.from_numpy(chair_occupancy(points)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> IMNet:
    return fit_tiny_chair_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """Path of an SVR checkpoint of TINY_MODEL that reconstructs the box chair from any image."""
    path = tmp_path_factory.mktemp("tiny_model") / "best.pt"
    save_checkpoint(
        path, {"stage": "svr", "model_config": config_to_dict(TINY_MODEL), "config": {}, "model": tiny_model.state_dict()}
    )
    return path


@pytest.fixture(scope="session")
def tiny_ae_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """The same weights saved as an IM-AE checkpoint (`train.py ae`): programs that reconstruct
    from images must refuse it, since an AE's image encoder is untrained."""
    path = tmp_path_factory.mktemp("tiny_ae") / "best.pt"
    save_checkpoint(
        path, {"stage": "ae", "model_config": config_to_dict(TINY_MODEL), "config": {}, "model": tiny_model.state_dict()}
    )
    return path
