"""From a trained model to meshes: image -> code -> occupancy field -> mesh.

    code = model.image_encoder(image)                 [1, 1, 128, 128] -> [1, 128]
    field = decoder_field(model.decoder, code)        points [N, 3] -> occupancy [N]
    mesh = extract_mesh(field, resolution)            any resolution, coarse-to-fine

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

from imnet.extract import extract_mesh
from imnet.model import Decoder, IMNet



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


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [128, 128] (object dark on white) -> float32 [1, 1, 128, 128] in [0, 1]."""
    image = np.asarray(image)
    if image.shape != (128, 128):
        raise ValueError(f"the network input must be 128x128 grayscale, got shape {image.shape}; use imnet.images.preprocess")
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None, None].to(device)


@dataclass
class Reconstruction:
    mesh: trimesh.Trimesh
    code: np.ndarray  # float32 [code_dim]
    evaluations: int  # decoder evaluations spent on the mesh
    seconds: float


def reconstruct_image(
    model: IMNet,
    image: np.ndarray,
    resolution: int = 128,
    level: float = 0.5,
    method: str = "coarse_to_fine",
    max_batch_points: int = 65536,
    half: bool = False,
) -> Reconstruction:
    """Mesh (in normalised object space [-0.5, 0.5]^3) of the object in a preprocessed image."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        code = model.image_encoder(image_tensor(image, device))[0]
    result = reconstruct_code(model, code, resolution, level, method, max_batch_points, half)
    return replace(result, seconds=time.perf_counter() - start)


def reconstruct_code(
    model: IMNet,
    code: torch.Tensor | np.ndarray,
    resolution: int = 128,
    level: float = 0.5,
    method: str = "coarse_to_fine",
    max_batch_points: int = 65536,
    half: bool = False,
) -> Reconstruction:
    """Mesh of a shape code (e.g. from the AE's voxel encoder, or a saved `.npy`)."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    code = torch.as_tensor(np.asarray(code, dtype=np.float32) if isinstance(code, np.ndarray) else code).to(device)
    field = decoder_field(model.decoder, code, half=half)
    mesh, stats = extract_mesh(field, resolution=resolution, level=level, method=method, max_batch_points=max_batch_points)
    return Reconstruction(mesh, code.float().cpu().numpy().reshape(-1), int(stats.evaluations), time.perf_counter() - start)
