"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values:
    {"format": "imnet-checkpoint", "version": 1, "stage": "ae" | "svr", "model_config": {...},
     "config": {...}, "model": state_dict, "optimizer": state_dict, "progress": {...}, "rng": {...}}
It is read with `torch.load(weights_only=True)`, which refuses any pickled code object, so a
tampered file fails to load instead of running something.

`load_model` is the one way programs get a model from a file: it also checks what the checkpoint is
for. An IM-AE checkpoint (`train.py ae`) has a trained voxel encoder and decoder but an untrained
image encoder; an IM-SVR checkpoint (`train.py svr`) has all three. Images need "svr"; shape codes
from voxels need "ae".
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from imnet.atomic import atomic_path
from imnet.config import ModelConfig, config_from_dict, config_to_dict
from imnet.model import IMNet

__all__ = ["CheckpointError", "STAGES", "save_checkpoint", "load_checkpoint", "load_model"]

FORMAT = "imnet-checkpoint"
VERSION = 1

# What each training stage's checkpoint is good for, and the command that writes it.
STAGES = {
    "ae": ("IM-AE", "train.py ae", "shape codes from voxels"),
    "svr": ("IM-SVR", "train.py svr", "images"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, tampered, or for another architecture."""


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint` to `path` atomically (temp file in the same folder, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **checkpoint}, f)
        f.flush()
        os.fsync(f.fileno())  # a checkpoint must survive a crash right after it is "written"


def load_weights_file(path: str | Path, what: str = "imnet checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` with one-line errors: missing, unreadable, or holding code.

    torch's own message for a file holding pickled objects is mostly advice to load it unsafely;
    only the line naming the culprit is kept, and nothing in the file is ever run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        head = f.read(1)
    if not zipfile.is_zipfile(path) and head != b"\x80":  # neither torch.save's zip nor its legacy pickle
        raise CheckpointError(f"{path} is not a readable {what}: not a file written by torch.save")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [l for l in str(e).splitlines() if "GLOBAL" in l or "Unsupported" in l]
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values, so it was not loaded "
            f"(it may have been tampered with, or is not a {what}){': ' + lines[0] if lines else ''}"
        ) from None
    except Exception as e:  # truncated or not a torch file at all
        raise CheckpointError(f"{path} is not a readable {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; raises CheckpointError with the reason when it is not usable."""
    path = Path(path)
    checkpoint = load_weights_file(path, "imnet checkpoint", map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an imnet checkpoint (no '{FORMAT}' marker)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {checkpoint.get('version')}; this imnet reads {VERSION}")
    return checkpoint


def load_model(
    path: str | Path,
    *,
    stage: str | None = None,
    expected: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[IMNet, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights.

    Args:
        path: a checkpoint written by `train.py`.
        stage: what the model is needed for: "svr" (reconstruction from images: the image encoder
            must be trained), "ae" (codes from voxels), or None (any). A checkpoint of the other
            stage is refused with a one-line message naming the right one.
        expected: an architecture the checkpoint must have; otherwise the message names every
            differing field (rather than a wall of state-dict key errors).
        map_location: where the tensors are loaded.

    Returns:
        The model (on `map_location`'s device for its buffers; call `.to(device)`), and the whole
        checkpoint dict.

    Raises:
        CheckpointError: unreadable, tampered, another stage or another architecture.
    """
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)} or None, got {stage!r}")
    checkpoint = load_checkpoint(path, map_location)
    if stage is not None and checkpoint.get("stage") != stage:
        raise CheckpointError(_wrong_stage(path, checkpoint.get("stage"), stage))
    try:
        # Checkpoints written before `image_size` existed ran the ResNet on the 128x128 input.
        config = config_from_dict(ModelConfig, {"image_size": 128, **checkpoint["model_config"]})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unusable model_config: {e}") from None
    if expected is not None and config != expected:
        diffs = [
            f"{name}: checkpoint {getattr(config, name)!r} vs expected {getattr(expected, name)!r}"
            for name in config_to_dict(expected)
            if getattr(config, name) != getattr(expected, name)
        ]
        raise CheckpointError(f"{path} is for another architecture: " + "; ".join(diffs))
    model = IMNet(config)
    try:
        result = model.load_state_dict(checkpoint["model"], strict=False)
    except RuntimeError as e:  # tensor shapes differ from what model_config says
        raise CheckpointError(f"{path}: weights do not match its model_config: {e}") from None
    missing = [key for key in result.missing_keys if key != "decoder.level"]  # older files: level 0.5, the default
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not match its model_config (missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    return model, checkpoint


def _wrong_stage(path: str | Path, found: object, wanted: str) -> str:
    name, command, use = STAGES[wanted]
    if found in STAGES:
        found_name, found_command, _ = STAGES[found]
        what = f"an {found_name} checkpoint ({found_command})"
        if found == "ae":
            what += ", whose image encoder was never trained"
    else:
        what = f"a checkpoint of unknown stage {found!r}"
    return f"{path} is {what}; {use} need an {name} checkpoint ({command})"
