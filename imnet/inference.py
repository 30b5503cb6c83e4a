"""From a trained model to meshes: image -> code -> occupancy field -> mesh.

    code = model.image_encoder(input_tensor(pixels))  uint8 [128, 128] -> [1, 1, 128, 128] -> [1, 128]
    field = decoder_field(model.decoder, code)        points [N, 3] -> occupancy [N], with bounds
    mesh = extract_mesh(field, resolution)            any resolution (coarse-to-fine, or certified on request)

`reconstruct_image` does all three for a preprocessed image (`imnet.images.preprocess` or
`crop_view`); `reconstruct_code` the last two for a code (e.g. from the AE's voxel encoder).

The field precomputes the decoder's code-dependent terms once and evaluates points under
`torch.inference_mode`, in the precision that `imnet.precision` chooses for the device ("auto":
bfloat16 where it runs fast, else float32). It also bounds the decoder over boxes of points
(`imnet.bounds`), which lets `imnet.extract` certify empty and full regions without sampling them.

bfloat16 and exactness: the bounds hold for the float32 decoder. In bfloat16, a point whose
occupancy lies within `BF16_REFINE_MARGIN` of the level is evaluated again in float32, so the side
of the level is float32's wherever bfloat16 could plausibly flip it; `bench/bench_extract.py`
measures how far bfloat16 strays from float32 near the surface, which is what the margin covers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import trimesh

from imnet.bounds import AffineForms, DecoderBounds, check_boundable
from imnet.extract import DEFAULT_MAX_BATCH_POINTS, extract_mesh
from imnet.images import input_tensor
from imnet.model import Decoder, IMNet
from imnet.precision import autocast, resolve_precision

__all__ = [
    "BF16_REFINE_MARGIN", "DecoderField", "BoundedDecoderField", "decoder_field",
    "Reconstruction", "reconstruct_image", "reconstruct_code",
]

BF16_REFINE_MARGIN = 0.2
"""Occupancy distance from the level within which bfloat16 results are recomputed in float32.
Measured at 2000 grid points next to the surface (`bench/bench_extract.py`): on the tiny trained
decoder of tests/conftest.py (steep: logits of +-50) bfloat16 differs from float32 by up to 0.065-0.096
in occupancy (runs differ) and flips 1.3-1.65% of those points' sides; on a paper-width decoder by up
to 0.017, flipping 0.25%. The margin is at least twice the largest difference; no point stayed
flipped after the recomputation in any of these runs."""


class DecoderField:
    """Occupancy field of one shape: points float32 [N, 3] -> occupancy float32 [N].

    Args:
        decoder: the trained decoder.
        code: the shape code, [code_dim] or [1, code_dim].
        precision: "auto" (``imnet.precision``'s choice for the decoder's device), "bf16" or "fp32".
        level: the iso-level extraction will use; in bfloat16, points whose occupancy is within
            ``BF16_REFINE_MARGIN`` of it are recomputed in float32.
    """

    def __init__(self, decoder: Decoder, code: torch.Tensor, *, precision: str = "auto", level: float = 0.5):
        self.decoder = decoder
        self.device = next(decoder.parameters()).device
        self.precision = resolve_precision(self.device, precision)
        self.level = float(level)
        self.code = code.reshape(1, -1).to(self.device, torch.float32)
        with torch.inference_mode():
            self.terms = decoder.code_terms(self.code)
        self.refined = 0  # bfloat16 points recomputed in float32

    def __call__(self, points: np.ndarray) -> np.ndarray:
        occupancy = self._evaluate(points, self.precision)
        if self.precision == "bf16":
            near = np.flatnonzero(np.abs(occupancy - self.level) < BF16_REFINE_MARGIN)
            if len(near):
                occupancy[near] = self._evaluate(points[near], "fp32")
                self.refined += len(near)
        return occupancy

    def _evaluate(self, points: np.ndarray, precision: str) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, precision):
            p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(self.device)[None]
            return self.decoder.forward_terms(p, self.terms)[0].float().cpu().numpy()


class BoundedDecoderField(DecoderField):
    """A :class:`DecoderField` that also bounds itself over boxes (``imnet.bounds``), for
    ``imnet.extract.certified_grid``.

    Args:
        bounds: "affine" (default: tighter, 5 evaluation units per box) or "interval" (2 units).
            With "interval" only constant bounds are offered.
        Others: see :class:`DecoderField`.
    """

    def __init__(self, decoder: Decoder, code: torch.Tensor, *, precision: str = "auto", level: float = 0.5,
                 bounds: str = "affine"):
        super().__init__(decoder, code, precision=precision, level=level)
        self.ranges = DecoderBounds(decoder, self.code, method=bounds)
        self.bound_cost = self.ranges.cost
        if bounds != "affine":
            self.affine_bounds = None  # constant bounds only: certified_grid then uses `bounds`

    def bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Occupancy bounds [K] over boxes low [K, 3] <= x <= high [K, 3]."""
        lower, upper = self.ranges.logit_bounds(low, high)
        # The same float32 sigmoid as the forward pass (monotone), past a margin for its rounding.
        sigmoid = lambda x: torch.sigmoid(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
        return sigmoid(lower - _LOGIT_MARGIN), sigmoid(upper + _LOGIT_MARGIN)

    def affine_bounds(self, low: np.ndarray, high: np.ndarray, level: float) -> AffineForms:
        """Affine bounds of logit(x) - logit(level): > 0 means occupancy above ``level``."""
        forms = self.ranges.affine_forms(low, high)
        forms.value = forms.value - float(np.log(level / (1 - level)))
        forms.error = forms.error + _LOGIT_MARGIN
        return forms


# Logit margin for the rounding of float32 sigmoid near the level (its slope is at most 1/4, so
# this is ~2.5e-5 in occupancy, hundreds of float32 ulps).
_LOGIT_MARGIN = 1e-4


def decoder_field(
    decoder: Decoder, code: torch.Tensor, *, precision: str = "auto", level: float = 0.5, bounds: str = "affine"
) -> DecoderField:
    """The occupancy field of one shape code: a :class:`BoundedDecoderField` when ``imnet.bounds``
    can bound this decoder, else a plain :class:`DecoderField` (extraction then samples
    coarse-to-fine)."""
    try:
        check_boundable(decoder)
    except NotImplementedError:
        return DecoderField(decoder, code, precision=precision, level=level)
    return BoundedDecoderField(decoder, code, precision=precision, level=level, bounds=bounds)


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
    level: float | None = None,
    method: str = "auto",
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS,
    precision: str = "auto",
) -> Reconstruction:
    """Mesh of a shape code (e.g. from the AE's voxel encoder, or a saved `.npy`).

    Args:
        model: the model whose decoder turns the code into a field.
        code: float [code_dim] or [1, code_dim].
        resolution: marching-cubes grid per axis, any integer (`imnet.extract.extract_mesh`).
        level: iso-level of the occupancy; None: the decoder's own (`Decoder.level`, calibrated on
            its training shapes).
        method: "auto" (= coarse-to-fine, the fast one),
            "certified", "coarse_to_fine" or "dense" (`imnet.extract.extract_mesh`).
        max_batch_points: decoder points per call; bounds memory at any resolution.
        precision: "auto", "bf16" or "fp32" (`imnet.precision`).
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    code = torch.as_tensor(np.asarray(code, dtype=np.float32) if isinstance(code, np.ndarray) else code).to(device)
    level = model.decoder.iso_level if level is None else level
    field = decoder_field(model.decoder, code, precision=precision, level=level)
    mesh, stats = extract_mesh(field, resolution=resolution, level=level, method=method, max_batch_points=max_batch_points)
    return Reconstruction(mesh, code.float().cpu().numpy().reshape(-1), int(stats.evaluations), time.perf_counter() - start)
