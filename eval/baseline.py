"""Retrieval baseline: answer a test image with the training shape whose views look most like it.

Tatarchenko et al. (CVPR 2019, "What do single-view 3D reconstruction networks learn?") showed that
this nearest-neighbour lookup scores on par with many single-view reconstruction networks, so a
network is only interesting where it beats it. ``eval.run`` scores the retrieved training shape's
ground truth exactly like the network's mesh.

    query = pixel_features(test_images)                     uint8 [M, 128, 128] -> [M, 1024]
    index, distance = nearest_shapes(query, view_features(train_data, pixel_features))

Distance from a test image to a training shape = the smallest L2 distance between the image's
features and the features of any of the shape's views (24 for R2N2-style data), so a test image
seen from a viewpoint that a training shape was rendered from finds that shape.

Features:
- ``"pixels"`` (default): the 128x128 network-input crop averaged over 4x4 blocks to 32x32, in
  [0, 1]. Cheap and model-free; mostly matches silhouette and viewpoint, which is the point of the
  baseline.
- ``"encoder"``: the 512-d output of the SVR image encoder's global average pool (the ResNet-18 layer
  before the code head), i.e. retrieval in the space the network itself learned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from imnet.datafile import ShapeData
from imnet.images import INPUT_SIZE, crop_view, input_tensor
from imnet.model import IMNet
from imnet.progress import progress as progress_bar

FEATURES = ("pixels", "encoder")
POOL = 4  # 128x128 crops -> 32x32 pixel features

Featurizer = Callable[[np.ndarray], np.ndarray]


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Down-sampled pixels: uint8 [..., 128, 128] network-input crops -> float32 [..., 1024] in [0, 1]."""
    images = np.asarray(images)
    if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"images must be [..., {INPUT_SIZE}, {INPUT_SIZE}] crops, got shape {images.shape}")
    size = INPUT_SIZE // POOL
    blocks = images.reshape(*images.shape[:-2], size, POOL, size, POOL).astype(np.float32)
    return (blocks.mean(axis=(-3, -1)) / 255.0).reshape(*images.shape[:-2], size * size)


def encoder_featurizer(model: IMNet, *, batch_size: int = 256) -> Featurizer:
    """Features from the model's image encoder: uint8 [..., 128, 128] -> float32 [..., 512].

    The ResNet-18 trunk up to its global average pool, i.e. everything but the head that maps to
    the shape code; the model is used on the device it is on.
    """
    net = model.image_encoder.net
    trunk = torch.nn.Sequential(*[module for name, module in net.named_children() if name != "fc"]).eval()
    device = next(model.parameters()).device

    def featurize(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        flat = images.reshape(-1, *images.shape[-2:])
        out = []
        with torch.inference_mode():
            for start in range(0, len(flat), batch_size):
                batch = input_tensor(flat[start : start + batch_size]).to(device)
                out.append(trunk(batch).flatten(1).float().cpu().numpy())
        features = np.concatenate(out) if out else np.zeros((0, net.fc.in_features), np.float32)
        return features.reshape(*images.shape[:-2], -1)

    return featurize


def view_features(
    data: ShapeData, featurize: Featurizer, *, chunk_shapes: int = 64, progress: bool = True
) -> Iterator[tuple[int, np.ndarray]]:
    """Features of every view of every shape of a data file, read and computed chunk by chunk.

    Only one chunk of views is in memory at a time (a shape's 24 views take 450 KB as uint8).

    Args:
        data: an open data file with ``pixels``.
        featurize: uint8 [..., 128, 128] -> float32 [..., D], e.g. :func:`pixel_features`.
        chunk_shapes: shapes per chunk.
        progress: show a progress bar.

    Yields:
        (first row of the chunk, float32 [n, V, D] features of its n shapes' V views).
    """
    if data.pixels is None:
        raise ValueError(f"{data.path} holds no views ('pixels'); retrieval needs rendered training views")
    with progress_bar(total=len(data), desc="retrieval features", unit="shape", disable=not progress) as bar:
        for start in range(0, len(data), chunk_shapes):
            views = crop_view(np.asarray(data.pixels[start : start + chunk_shapes]))
            yield start, featurize(views)
            bar.update(len(views))


def nearest_shapes(
    query: np.ndarray, chunks: Iterable[tuple[int, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the shape with the nearest view (L2), searched chunk by chunk.

    Args:
        query: float [M, D] features of the test images.
        chunks: (first row, float [n, V, D]) as yielded by :func:`view_features`.

    Returns:
        index: int64 [M], row of the nearest shape (the first one on ties).
        distance: float32 [M], L2 distance to its nearest view.
    """
    # float64: in float32 the expansion below loses the exact zero of identical images to rounding.
    query = np.asarray(query, dtype=np.float64)
    if query.ndim != 2:
        raise ValueError(f"query must be [M, D] features, got shape {query.shape}")
    best = np.full(len(query), np.inf)
    index = np.full(len(query), -1, dtype=np.int64)
    query_sq = np.square(query).sum(axis=1)
    for start, features in chunks:
        n, views, dim = features.shape
        if dim != query.shape[1]:
            raise ValueError(f"training features have {dim} dimensions but the queries {query.shape[1]}")
        flat = features.reshape(n * views, dim).astype(np.float64)
        # |q - t|^2 = |q|^2 - 2 q.t + |t|^2: one matrix product instead of an [M, n V, D] difference.
        squared = query_sq[:, None] - 2.0 * query @ flat.T + np.square(flat).sum(axis=1)[None]
        per_shape = squared.reshape(len(query), n, views).min(axis=2)
        nearest = per_shape.argmin(axis=1)
        candidate = per_shape[np.arange(len(query)), nearest]
        better = candidate < best
        best[better] = candidate[better]
        index[better] = start + nearest[better]
    if len(query) and (index < 0).any():
        raise ValueError("no training shapes to retrieve from")
    # Rounding in the expansion can leave tiny negative squares for identical images.
    return index, np.sqrt(np.maximum(best, 0.0)).astype(np.float32)


def retrieve(
    images: np.ndarray,
    train: ShapeData,
    *,
    features: str = "pixels",
    model: IMNet | None = None,
    chunk_shapes: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The retrieval baseline's answer for test images.

    Args:
        images: uint8 [M, 128, 128] network-input crops of the test views.
        train: open training data file with ``pixels``.
        features: "pixels" or "encoder" (see the module docstring).
        model: the SVR model, needed for ``features="encoder"``.
        chunk_shapes: training shapes whose views are held in memory at once.
        progress: show a progress bar over the training shapes.

    Returns:
        index: int64 [M], training row retrieved for each image.
        distance: float32 [M], feature distance to its nearest view.
    """
    if features == "pixels":
        featurize = pixel_features
    elif features == "encoder":
        if model is None:
            raise ValueError("encoder features need the SVR model; give a checkpoint or use pixel features")
        featurize = encoder_featurizer(model)
    else:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    query = featurize(np.asarray(images))
    return nearest_shapes(query, view_features(train, featurize, chunk_shapes=chunk_shapes, progress=progress))
