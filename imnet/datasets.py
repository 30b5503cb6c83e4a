"""torch Datasets over IM-NET data files (`imnet.datafile`), read into memory once.

    AEDataset    one sampling level of IM-AE training: voxels, points, occupancy values
    SVRDataset   IM-SVR training: one rendered view per shape and the shape's AE code

Both keep the file's arrays in memory as stored (uint8; occupancy values as float32) and convert
one item at a time, so a dataset costs about the size of its data uncompressed (voxels 256 KB and
24 views 450 KB per shape), and workers forked by a DataLoader share it. Randomness (point subsets, the view, augmentation) is drawn
from torch's global generator, so a run is reproducible from its seed and from the RNG states saved
in checkpoints, with or without DataLoader workers or a DistributedSampler.

Codes files (written by `imnet.training.extract_codes`) are `.npz` files with
    train_codes float32 [N, code_dim], train_names str [N]   codes of the training data file
    val_codes   float32 [M, code_dim], val_names   str [M]   codes of the validation file, if given
    checkpoint  str                                          the AE checkpoint they came from
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from imnet.datafile import ShapeData, open_datafile
from imnet.images import crop_view, input_tensor
from imnet.sampling import indices_to_coords

__all__ = ["load_shapes", "AEDataset", "stretch_shape", "read_codes", "SVRDataset", "jitter_view"]

DataSource = str | os.PathLike | ShapeData


def load_shapes(data: DataSource, keys: list[str], optional: tuple[str, ...] = ()) -> ShapeData:
    """`data` as a ShapeData holding `keys` (and those of `optional` the file has) in memory.

    An open ShapeData is loaded, not copied.
    """
    if isinstance(data, ShapeData):
        return data.load_into_memory([*keys, *(k for k in optional if data.has(k))])
    shapes = open_datafile(data)
    try:
        shapes.load_into_memory([*keys, *(k for k in optional if shapes.has(k))])
    finally:
        # Everything needed is in memory now; a closed file cannot trouble forked workers.
        shapes.close()
    return shapes


class AEDataset(Dataset):
    """IM-AE training items at one sampling level (16, 32 or 64).

    Item i is a dict:
        voxels  float32 [1, 64, 64, 64]   the encoder input (1 inside, 0 outside)
        points  float32 [P, 3]            sample points in object space [-0.5, 0.5]^3
        values  float32 [P]               their occupancy
        index   int                       row in the data file

    P is all points of the level, or a fresh random subset of `points_per_shape` of them every
    time the item is read. With `uniform_fraction` f > 0 at levels 32 and 64, a share f of those P
    points is drawn from the coarse level-16 set instead (one point per 16^3 block all over the
    cube), so the decoder keeps seeing space far from the surface and draws no floaters there.

    With `stretch` s > 0 every item is a new shape: the stored one stretched along x, y and z by
    independent factors, log-uniform in [1 / (1 + s), 1 + s], then scaled as a whole so that its
    bounding-box diagonal stays 1 (the normalisation of every shape, `imnet.mesh.normalise`); see
    `stretch_shape`. A chair of other proportions is still a chair, so the networks see more
    shapes than the file holds.
    """

    def __init__(self, data: DataSource, level: int, points_per_shape: int = 0, uniform_fraction: float = 0.0,
                 stretch: float = 0.0):
        if not 0.0 <= uniform_fraction < 1.0:
            raise ValueError(f"uniform_fraction must be in [0, 1), got {uniform_fraction}")
        if not 0.0 <= stretch < 1.0:
            raise ValueError(f"stretch must be in [0, 1), got {stretch}")
        mix = uniform_fraction > 0 and level != 16 and points_per_shape > 0
        keys = ["voxels", f"points_{level}", f"values_{level}", *(["points_16", "values_16"] if mix else [])]
        shapes = load_shapes(data, keys)
        self.level = level
        self.stretch = stretch
        self.voxels = torch.from_numpy(shapes.voxels)
        if stretch > 0:
            self.extents = torch.from_numpy(_extents(np.asarray(shapes.voxels, dtype=bool)))
        # Kept as the file's uint8 grid indices (4x smaller than float coordinates).
        self.sets = [(shapes.point_indices(level), shapes.point_grid(level), torch.from_numpy(shapes.values(level)))]
        available = self.sets[0][2].shape[1]
        if not 0 <= points_per_shape <= available:
            raise ValueError(
                f"points_per_shape={points_per_shape}, but level {level} of {shapes.path} has "
                f"{available} points per shape; use 0 (all) or at most {available}"
            )
        self.counts = [points_per_shape]
        if mix:
            uniform = round(uniform_fraction * points_per_shape)
            self.sets.append((shapes.point_indices(16), shapes.point_grid(16), torch.from_numpy(shapes.values(16))))
            self.counts = [points_per_shape - uniform, uniform]

    def __len__(self) -> int:
        return len(self.voxels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        points, values = [], []
        for (indices, grid, occupancy), count in zip(self.sets, self.counts):
            p = torch.from_numpy(indices_to_coords(indices[index], grid=grid))
            v = occupancy[index]
            if count:
                subset = torch.randperm(len(v))[:count]
                p, v = p[subset], v[subset]
            points.append(p)
            values.append(v)
        voxels, points = self.voxels[index], torch.cat(points)
        if self.stretch > 0:
            factors = torch.exp((torch.rand(3) * 2 - 1) * np.log1p(self.stretch))
            factors *= self.extents[index].norm() / (factors * self.extents[index]).norm()  # the same diagonal
            stretched, points = stretch_shape(voxels.numpy().view(bool), points.numpy(), factors.numpy())
            voxels, points = torch.from_numpy(stretched.view(np.uint8)), torch.from_numpy(points)  # uint8: a fast .float()
        return {"voxels": voxels[None].float(), "points": points, "values": torch.cat(values), "index": index}


def _extents(voxels: np.ndarray) -> np.ndarray:
    """Bounding-box extents of shapes, measured on their voxels to within a cell.

    voxels bool [N, R, R, R] over [-0.5, 0.5]^3 -> float64 [N, 3]: per axis, the distance between the
    centres of the first and last occupied cells (0 for an empty shape)."""
    grid = voxels.shape[1]
    extents = []
    for other in ((2, 3), (1, 3), (1, 2)):
        occupied = voxels.any(axis=other)  # [N, R] along one axis
        first, last = occupied.argmax(axis=1), grid - 1 - occupied[:, ::-1].argmax(axis=1)
        extents.append(np.where(occupied.any(axis=1), (last - first) / grid, 0.0))
    return np.stack(extents, axis=1)


def stretch_shape(voxels: np.ndarray, points: np.ndarray, factors) -> tuple[np.ndarray, np.ndarray]:
    """A shape scaled about the origin by `factors` along x, y and z.

    Args:
        voxels: [R, R, R] occupancy (0/1 or bool), indexed [x, y, z], over [-0.5, 0.5]^3.
        points: float32 [P, 3] sample points in object space.
        factors: 3 positive scale factors.

    Returns:
        (voxels bool [R, R, R], points float32 [P, 3]). The points are `points * factors`; their
        occupancy values carry over unchanged, since the scaled shape holds `factors * p` exactly
        when the shape holds p. Along each axis a new cell takes the old cells whose centres it
        holds after scaling (one or more where the axis shrinks, so no part is lost), or where it
        holds none (the axis grows) the old cell under its own centre: occupied volume scales with
        the factors rather than growing a cell at every edge. Parts scaled out of the cube are cut off.
    """
    factors = np.asarray(factors, dtype=np.float64)
    if factors.shape != (3,) or not np.all(factors > 0):
        raise ValueError(f"factors must be 3 positive numbers, got {factors.tolist()}")
    grid = voxels.shape[0]
    out = np.asarray(voxels, dtype=bool)
    centres = (np.arange(grid) + 0.5) / grid - 0.5
    cells = np.arange(grid)
    for axis, factor in enumerate(factors):
        # The new cell each old centre lands in (non-decreasing), and for new cell a the old cells
        # [low[a], high[a]] that land in it, else the old cell under a's centre.
        landed = np.floor((centres * factor + 0.5) * grid)
        low = np.searchsorted(landed, cells, side="left")
        high = np.searchsorted(landed, cells, side="right") - 1
        under = np.floor((centres / factor + 0.5) * grid).astype(np.int64)
        under[(under < 0) | (under >= grid)] = grid  # out of the cube: emptied below
        empty = low > high
        low[empty], high[empty] = under[empty], under[empty]
        outside = low == grid
        low[outside] = high[outside] = 0
        # An OR over each range, one offset into it at a time (1-2 cells for factors near 1).
        new = out.take(low, axis=axis)
        for offset in range(1, int((high - low).max()) + 1):
            new |= out.take(np.minimum(low + offset, high), axis=axis)
        if outside.any():
            np.moveaxis(new, axis, 0)[outside] = False
        out = new
    return out, (np.asarray(points) * factors).astype(np.float32)


def read_codes(path: str | os.PathLike, split: str, data: DataSource, required: bool = True) -> np.ndarray | None:
    """The `split` ("train" or "val") codes of a codes file, checked against `data`'s shapes.

    Returns float32 [N, code_dim], row i the code of shape i of `data`; None when the file has no
    such codes and they are not `required`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codes file not found: {path}; write it with `python train.py codes`")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # numpy's reason for a file of another kind is about pickles
        npz = None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a codes file (the .npz that `python train.py codes` writes)")
    with npz:
        if f"{split}_codes" not in npz:
            if not required:
                return None
            raise ValueError(
                f"{path} has no {split} codes (it has {sorted(npz.files)}); run `python train.py codes` "
                f"with {'--val-data' if split == 'val' else '--data'} set"
            )
        codes = npz[f"{split}_codes"].astype(np.float32)
        names = [str(name) for name in npz[f"{split}_names"]]
    shapes = data if isinstance(data, ShapeData) else open_datafile(data)
    try:
        n, data_names, where = len(shapes), shapes.names, shapes.path
    finally:
        if not isinstance(data, ShapeData):
            shapes.close()
    if len(codes) != n or (data_names is not None and any(names) and names != list(data_names)):
        raise ValueError(
            f"the {split} codes in {path} ({len(codes)} shapes) were extracted from another data file "
            f"than {where} ({n} shapes); run `python train.py codes` on this file"
        )
    return codes


class SVRDataset(Dataset):
    """IM-SVR items: one of a shape's views and the shape's AE code.

    Item i is a dict:
        image   float32 [1, 128, 128]   the view's network input (`imnet.images`), object dark on white
        code    float32 [code_dim]      regression target (empty when no codes were given)
        points  float32 [P, 3]          with `points_per_shape` P > 0: level-64 sample points ...
        values  float32 [P]             ... and their occupancy, for a loss through the decoder
        index   int                     row in the data file
        view    int                     which view

    Args:
        data: data file with `pixels`.
        codes: float32 [N, code_dim] (see `read_codes`), or None to serve images only.
        view: a fixed view index (validation), or None for a random view each time an item is read.
        augment: jitter the view (`jitter_view`: shift, scale, object tone), keeping the background white.
        flip: mirror the view left-right with probability 1/2. For a shape that is mirror-symmetric
            about its x = 0 plane (most chairs, tables, cars, airplanes in ShapeNet's frame), the
            mirrored view is exactly the view from the mirrored camera (azimuth -a), so the code
            target stays right and each shape shows twice as many distinct views.
        train_views: with view=None, draw only from views 0..train_views-1 (0: all), so the other
            views stay held out for testing.
        points_per_shape: also serve this many random near-surface points per item (0: none).
    """

    def __init__(
        self,
        data: DataSource,
        codes: np.ndarray | None = None,
        view: int | None = None,
        augment: bool = False,
        train_views: int = 0,
        flip: bool = False,
        points_per_shape: int = 0,
    ):
        shapes = load_shapes(data, ["pixels", *(["points_64", "values_64"] if points_per_shape else [])])
        pixels = shapes.pixels
        if pixels is None:
            raise ValueError(f"{shapes.path} holds no rendered views (pixels); IM-SVR needs a data file with views")
        self.pixels = torch.from_numpy(pixels)
        n_views = self.pixels.shape[1]
        if view is not None and not 0 <= view < n_views:
            raise ValueError(f"view must be in 0..{n_views - 1}, got {view}")
        if codes is not None and len(codes) != len(self.pixels):
            raise ValueError(f"got {len(codes)} codes for {len(self.pixels)} shapes")
        self.codes = None if codes is None else torch.from_numpy(np.asarray(codes, dtype=np.float32))
        if not 0 <= train_views <= n_views:
            raise ValueError(f"train_views must be in 0..{n_views} (0: all views), got {train_views}")
        self.view = view
        self.augment = augment
        self.flip = flip
        self.train_views = train_views or n_views
        self.points_per_shape = points_per_shape
        if points_per_shape:
            self.point_indices, self.point_grid = shapes.point_indices(64), shapes.point_grid(64)
            self.values = torch.from_numpy(shapes.values(64))

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        view = self.view if self.view is not None else int(torch.randint(self.train_views, ()))
        pixels = self.pixels[index, view]
        if self.flip and torch.rand(()) < 0.5:
            pixels = pixels.flip(-1)  # the whole rendering about its centre, then the (off-centre) crop
        image = input_tensor(crop_view(pixels))
        if self.augment:
            image = jitter_view(image)
        code = self.codes[index] if self.codes is not None else torch.zeros(0)
        item = {"image": image, "code": code, "index": index, "view": view}
        if self.points_per_shape:
            subset = torch.randperm(self.values.shape[1])[: self.points_per_shape]
            item["points"] = torch.from_numpy(indices_to_coords(self.point_indices[index][subset.numpy()], grid=self.point_grid))
            item["values"] = self.values[index][subset]
        return item


def jitter_view(
    image: torch.Tensor,
    max_shift: float = 0.08,
    max_scale: float = 0.10,
    tone_gain: tuple[float, float] = (0.6, 1.4),
    max_log_gamma: float = 0.7,
) -> torch.Tensor:
    """Random shift, scale and object tone of a view, keeping the background white.

    image: float32 [1, H, W] in [0, 1], object dark on white. Shift is a fraction of the image
    size, scale relative. Work is done on the darkness d = 1 - image, which is 0 on the background,
    so zero padding, scaling and the tone change all leave the background white. The tone change
    d -> gain * d^gamma makes the object lighter or darker and its shading flatter or harsher, as
    if it had another colour or material: renders of grey meshes then also prepare the network for
    the black office chair or the pale wooden table of a product photo.
    """
    shift = (torch.rand(2) * 2 - 1) * max_shift * 2  # affine_grid works in [-1, 1] coordinates
    scale = 1 + (torch.rand(()) * 2 - 1) * max_scale
    gain = tone_gain[0] + torch.rand(()) * (tone_gain[1] - tone_gain[0])
    gamma = torch.exp((torch.rand(()) * 2 - 1) * max_log_gamma)
    theta = torch.zeros(1, 2, 3)
    theta[0, 0, 0] = theta[0, 1, 1] = 1 / scale
    theta[0, :, 2] = shift
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    darkness = F.grid_sample((1 - image)[None], grid, padding_mode="zeros", align_corners=False)[0]
    return (1 - gain * darkness.clamp(0, 1) ** gamma).clamp(0, 1)
