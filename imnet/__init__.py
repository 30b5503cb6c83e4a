"""imnet: single-image 3D reconstruction with IM-NET implicit field decoders (Chen & Zhang, CVPR 2019).

    import imnet

    model, _ = imnet.load_model("runs/chair/svr/best.pt", stage="svr")
    pixels = imnet.preprocess("photo.jpg")                        # uint8 [128, 128]
    result = imnet.reconstruct_image(model, pixels, resolution=256)
    result.mesh.export("chair.obj")                               # object space [-0.5, 0.5]^3

The names below are the public API; every module lists its own in ``__all__``. Conventions (object
space, grids, images) are in docs/conventions.md, the module map in docs/design.md.

Importing ``imnet`` is cheap: each name is imported from its module when first used, so a program
that needs only ``imnet.mesh`` (say, a data-preparation worker) does not load torch. Nothing here
imports the renderer (pyrender, extra ``render``) or the web app's packages (extra ``app``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "IMNet": "imnet.model",
    "Decoder": "imnet.model",
    "VoxelEncoder": "imnet.model",
    "ImageEncoder": "imnet.model",
    "ModelConfig": "imnet.config",
    "load_model": "imnet.checkpoint",
    "CheckpointError": "imnet.checkpoint",
    "preprocess": "imnet.images",
    "crop_view": "imnet.images",
    "ImageError": "imnet.images",
    "reconstruct_image": "imnet.inference",
    "reconstruct_code": "imnet.inference",
    "extract_mesh": "imnet.extract",
    "dense_grid": "imnet.extract",
    "load_mesh": "imnet.mesh",
    "MeshError": "imnet.mesh",
    "resolve_device": "imnet.precision",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'imnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


if TYPE_CHECKING:  # for editors and type checkers, which do not run __getattr__
    from imnet.checkpoint import CheckpointError, load_model
    from imnet.config import ModelConfig
    from imnet.extract import dense_grid, extract_mesh
    from imnet.images import ImageError, crop_view, preprocess
    from imnet.inference import reconstruct_code, reconstruct_image
    from imnet.mesh import MeshError, load_mesh
    from imnet.model import Decoder, ImageEncoder, IMNet, VoxelEncoder
    from imnet.precision import resolve_device
