"""What a training run writes besides checkpoints: metrics.csv, TensorBoard events, console lines.

    log = RunLog(out_dir, columns, enabled=runtime.is_main)
    log.row({"epoch": 3, "train_loss": 0.12, ...})      # metrics.csv + TensorBoard scalars + one line
    log.images("val/depth_truth_vs_predicted", preview_image(pairs), step)
    log.close()

metrics.csv gets one row per epoch; a resumed run first drops the rows a crashed run logged after
its last checkpoint (`truncate`), and TensorBoard's `purge_step` does the same for its events.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from imnet.atomic import atomic_path

__all__ = ["RunLog", "preview_image"]


class RunLog:
    """The logs of one run in `out_dir`; a no-op in processes other than the main one."""

    def __init__(self, out_dir: Path, columns: list[str], *, enabled: bool = True, purge_step: int = 0):
        self.out_dir = Path(out_dir)
        self.columns = columns
        self.enabled = enabled
        self.purge_step = purge_step
        self.path = self.out_dir / "metrics.csv"
        self.written: set[Path] = set()
        self._writer = None

    def start_fresh(self) -> None:
        """Forget the rows of an earlier, abandoned run in the same folder."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate(self, epoch: int) -> None:
        """Drop rows logged after `epoch` (by a run that crashed before its next checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= epoch]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            out.writeheader()
            out.writerows(rows)

    def row(self, values: dict, step: int, console: str) -> None:
        """Append one row to metrics.csv, its numbers to TensorBoard (as `group/name`), a line to the console."""
        if not self.enabled:
            return
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            out = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                out.writeheader()
            out.writerow({key: _cell(values.get(key)) for key in self.columns})
        self.written.add(self.path)
        writer = self._tensorboard()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                if math.isfinite(value):
                    writer.add_scalar(key.replace("_", "/", 1), value, step)
        writer.flush()
        tqdm.write(console)

    def images(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.enabled:
            self._tensorboard().add_image(tag, image, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            # purge_step drops events a crashed run logged after its last checkpoint.
            self._writer = SummaryWriter(self.out_dir / "tensorboard", purge_step=self.purge_step)
            self.written.add(self.out_dir / "tensorboard")
        return self._writer


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.9g}"
    return str(value)


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
