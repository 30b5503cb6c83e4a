"""From a trained model to meshes: image -> code -> occupancy field -> mesh.

    code = model.image_encoder(input_tensor(pixels))  uint8 [128, 128] -> [1, 1, 128, 128] -> [1, 128]
    field = decoder_field(model.decoder, code)        points [N, 3] -> occupancy [N]
    mesh = extract_mesh(field, resolution)            any resolution, coarse-to-fine

`reconstruct_image` does all three for a preprocessed image (`imnet.images.preprocess` or
`crop_view`); `reconstruct_code` the last two for a code (e.g. from the AE's voxel encoder).

The field precomputes the decoder's code-dependent terms once, and evaluates points in batches under
`torch.inference_mode`, in half precision on GPUs when asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import trimesh

from imnet.extract import DEFAULT_MAX_BATCH_POINTS, extract_mesh
from imnet.images import input_tensor
from imnet.model import Decoder, IMNet

__all__ = ["Reconstruction", "decoder_field", "reconstruct_image", "reconstruct_code"]


def decoder_field(
    decoder: Decoder,
    code: torch.Tensor,
    half: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """Occupancy field of one shape: points float32 [N, 3] -> occupancy float32 [N].

    `code` is [code_dim] or [1, code_dim] on the decoder's device. With `half`, the decoder runs in
    float16 on CUDA (bfloat16 elsewhere); the output is float32 either way.
    """
    device = next(decoder.parameters()).device
    dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if half else torch.float32
    with torch.inference_mode():
        terms = decoder.code_terms(code.reshape(1, -1).to(device))

    def field(points: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=half):
            p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)[None]
            return decoder.forward_terms(p, terms)[0].float().cpu().numpy()

    return field


@dataclass
class Reconstruction:
    mesh: trimesh.Trimesh
    code: np.ndarray  # float32 [code_dim]
    evaluations: int  # decoder evaluations spent on the mesh
    seconds: float


def reconstruct_image(model: IMNet, image: np.ndarray, **options) -> Reconstruction:
    """Mesh (in normalised object space [-0.5, 0.5]^3) of the object in a preprocessed image.

    Args:
        model: an IM-SVR model (`imnet.checkpoint.load_model(path, stage="svr")`).
        image: uint8 [128, 128], object dark on white (`imnet.images.preprocess` or `crop_view`).
        options: the keyword options of :func:`reconstruct_code` (resolution, level, ...).
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        code = model.image_encoder(input_tensor(image)[None].to(device))[0]
    result = reconstruct_code(model, code, **options)
    return replace(result, seconds=time.perf_counter() - start)


def reconstruct_code(
    model: IMNet,
    code: torch.Tensor | np.ndarray,
    *,
    resolution: int = 128,
    level: float = 0.5,
    method: str = "coarse_to_fine",
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS,
    half: bool = False,
) -> Reconstruction:
    """Mesh of a shape code (e.g. from the AE's voxel encoder, or a saved `.npy`).

    Args:
        model: the model whose decoder turns the code into a field.
        code: float [code_dim] or [1, code_dim].
        resolution: marching-cubes grid per axis, any integer (`imnet.extract.extract_mesh`).
        level: iso-level of the occupancy.
        method: "coarse_to_fine" (evaluates the decoder only near the surface) or "dense".
        max_batch_points: decoder points per call; bounds memory at any resolution.
        half: decoder in half precision (float16 on CUDA, bfloat16 elsewhere).
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    code = torch.as_tensor(np.asarray(code, dtype=np.float32) if isinstance(code, np.ndarray) else code).to(device)
    field = decoder_field(model.decoder, code, half=half)
    mesh, stats = extract_mesh(field, resolution=resolution, level=level, method=method, max_batch_points=max_batch_points)
    return Reconstruction(mesh, code.float().cpu().numpy().reshape(-1), int(stats.evaluations), time.perf_counter() - start)
