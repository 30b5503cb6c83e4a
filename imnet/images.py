"""Input images for the single-view network: stored views, R2N2 renderings and photos to 128x128.

The image encoder is trained on 3D-R2N2-style views: 137x137 renderings composited onto white, in
grayscale, centre-cropped to [4:132, 4:132] (:data:`VIEW_CROP`, the one definition of that crop).
Anything shown to the network at test time must look the same: a 128x128 uint8 image, object dark
on a white (255) background, centred, about as large in the frame as in the training views. The
network input is that image as float32 divided by 255 (:func:`input_tensor`).

    >>> pixels = crop_view(data.pixels[i, view])         # a stored view: uint8 [137, 137] -> [128, 128]
    >>> pixels = preprocess("my_chair.jpg")              # any picture: uint8 [128, 128]
    >>> pixels, box = preprocess("00.png", return_box=True)
    >>> image = input_tensor(pixels)                     # float32 [1, 128, 128] in [0, 1]

Two ways in (``kind``):
- ``"r2n2"``: a 137x137 3D-R2N2 rendering (RGBA, transparent background) or an already composited view;
  composited onto white and cropped exactly as in training.
- ``"photo"``: any other picture. The object is found from the alpha channel when there is one,
  otherwise as the pixels that differ from the background colour (median colour of the border pixels);
  it is cropped to a square around it, so that its longest side fills ``fill`` of the frame, and resized.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageOps
from scipy import ndimage
from skimage.transform import resize

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageError",
    "Box",
    "VIEW_SIZE",
    "INPUT_SIZE",
    "VIEW_CROP",
    "R2N2_FILL",
    "MAX_MEGAPIXELS",
    "BACKGROUND_TOLERANCE",
    "crop_view",
    "input_tensor",
    "load_image",
    "composite_on_white",
    "object_mask",
    "preprocess",
]

# Geometry of the training views: 137x137 renderings, the network sees their centre 128x128.
VIEW_SIZE = 137
INPUT_SIZE = 128
VIEW_CROP = slice(4, 4 + INPUT_SIZE)  # as IM-NET: 4 pixels off the top/left, 5 off the bottom/right

# Longest side of the object's bounding box relative to the 128-pixel network input in the training
# views. Measured on the 24 views of tests/data/r2n2_sample (chair 1a6f615e...): mask = alpha >= 0.5
# in the [4:132, 4:132] crop, longest bbox side / 128; median 0.742 (range 0.625 - 0.914).
# tests/test_images.py re-measures it.
R2N2_FILL = 0.742

MAX_MEGAPIXELS = 40.0
"""Larger pictures are refused from their header, before decoding: at 40 MP the float RGBA copy
alone is 640 MB, and the network sees 128x128 pixels of it. reconstruct.py and the app share it."""

BACKGROUND_TOLERANCE = 0.1
"""Photos without transparency: a pixel is the object where its colour differs from the border's by
more than this (0..1) in some channel. reconstruct.py's --background-tolerance defaults to it."""

# ITU-R BT.601 luma, as Pillow's "L" conversion and OpenCV's BGR2GRAY (which made IM-NET's data) use.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

ImageSource = str | os.PathLike | BinaryIO


class ImageError(ValueError):
    """An image could not be read or contains nothing usable."""


class Box(NamedTuple):
    """A crop window in input-image pixels; bottom and right are exclusive. It may reach outside the
    image (that part is treated as white background)."""

    top: int
    left: int
    bottom: int
    right: int


def crop_view(views: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Stored 137x137 views -> the 128x128 network input, the centre crop the network is trained on.

    Args:
        views: [..., 137, 137], numpy or torch (e.g. ``pixels`` rows of a data file, uint8).

    Returns:
        [..., 128, 128], a view (no copy) of the same type and dtype.
    """
    if tuple(views.shape[-2:]) != (VIEW_SIZE, VIEW_SIZE):
        raise ImageError(
            f"stored views are {VIEW_SIZE}x{VIEW_SIZE}, got shape {tuple(views.shape)}; "
            "use preprocess() for other pictures"
        )
    return views[..., VIEW_CROP, VIEW_CROP]


def input_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The network's float input of 128x128 images: uint8 [..., 128, 128] -> float32 [..., 1, 128, 128].

    Values are pixel / 255 in [0, 1], object dark on white, with the channel axis the encoder expects.
    """
    import torch  # here: data preparation uses this module without the network

    pixels = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
    if tuple(pixels.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        raise ImageError(
            f"the network input must be {INPUT_SIZE}x{INPUT_SIZE} grayscale, got shape {tuple(pixels.shape)}; "
            "use crop_view() for stored views and preprocess() for pictures"
        )
    return pixels.float().div(255.0).unsqueeze(-3)


def load_image(source: ImageSource, *, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """Read an image file into float RGBA.

    Any format and mode Pillow reads is accepted (PNG, JPEG, WebP, ...; RGB, RGBA, L, LA, P with or
    without transparency, CMYK, 16-bit). The EXIF orientation is applied, so the array is upright as
    image viewers show it. 16-bit images (Pillow modes ``I;16*`` and ``I``) are scaled by 1/65535;
    images without alpha get alpha 1; palette or colour-key transparency becomes alpha 0.

    Args:
        source: a path, or a binary file object (e.g. an upload).
        max_megapixels: larger images are refused from their header, before their pixels are decoded.

    Returns:
        float32 [H, W, 4], RGBA in [0, 1].

    Raises:
        ImageError: the file is missing, is not an image, is larger than ``max_megapixels``, is
            truncated, or has no pixels.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<file object>")
    try:
        with warnings.catch_warnings():
            # Pillow warns about large images at open; the size is checked below, in one message.
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            img = PIL.Image.open(source)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file; check the path") from None
    except PIL.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read (empty file, or not PNG/JPEG/WebP/...)") from None
    except PIL.Image.DecompressionBombError:
        raise ImageError(f"{name}: far larger than {max_megapixels:g} megapixels; shrink it first") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot open ({e})") from None
    if img.width * img.height > max_megapixels * 1e6:
        img.close()
        raise ImageError(
            f"{name}: {img.width}x{img.height} is {img.width * img.height / 1e6:.1f} megapixels, more than the "
            f"{max_megapixels:g} accepted; shrink it (the network sees 128x128 pixels anyway)"
        )
    with img:
        try:
            img.load()
        except OSError as e:  # Pillow reports truncated or corrupt pixel data as a plain OSError
            raise ImageError(f"{name}: cannot decode the image ({e}); the file may be truncated or corrupt") from None
        img = PIL.ImageOps.exif_transpose(img)
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{name}: image is empty ({img.width}x{img.height} pixels)")

    if img.mode.startswith("I"):
        # Pillow's own conversion to 8 bit clips 16-bit values instead of scaling them.
        gray = np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return _gray_to_rgba(gray)
    if img.mode == "F":
        return _gray_to_rgba(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0))
    return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0


def composite_on_white(image: np.ndarray) -> np.ndarray:
    """Composite onto a white background and convert to grayscale (BT.601 luma).

    This is how the training views were made from the transparent R2N2 renderings. To store the result
    as uint8 like IM-NET's ``pixels``, use ``np.rint(gray * 255).astype(np.uint8)``.

    Args:
        image: [H, W, 4] RGBA, or [H, W, 3] RGB, [H, W, 2] gray + alpha, [H, W] gray; uint8, uint16,
            or float in [0, 1].

    Returns:
        float32 [H, W] in [0, 1], white background = 1.
    """
    rgba = _as_rgba(image)
    gray = rgba[..., :3] @ _LUMA
    alpha = rgba[..., 3]
    return np.clip(gray * alpha + (1.0 - alpha), 0.0, 1.0)


def object_mask(image: np.ndarray, *, tolerance: float = BACKGROUND_TOLERANCE, min_part: float = 0.02) -> np.ndarray:
    """Find the object's pixels in a picture.

    With an alpha channel that has transparent pixels, the object is where alpha >= 0.5. Otherwise the
    background colour is taken as the median colour of the border pixels (so the object may touch the
    border, as long as it covers less than half of it), and the object is every pixel whose colour
    differs from it by more than ``tolerance`` in some channel. Connected parts smaller than
    ``min_part`` times the largest part are dropped as specks (noise, dust, JPEG artefacts).

    Args:
        image: [H, W, 4] / [H, W, 3] / [H, W, 2] / [H, W], uint8, uint16, or float in [0, 1].
        tolerance: colour difference (0..1 per channel) above which a pixel is not background.
            Raise it for noisy or unevenly lit backgrounds, lower it for low-contrast objects.
        min_part: parts smaller than this fraction of the largest part are removed.

    Returns:
        bool [H, W], True on the object. All False if nothing differs from the background.
    """
    rgba = _as_rgba(image)
    if _has_transparency(rgba):
        mask = rgba[..., 3] >= 0.5
    else:
        rgb = rgba[..., :3]
        border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
        background = np.median(border, axis=0)
        mask = np.logical_or.reduce([np.abs(rgb[..., c] - background[c]) > tolerance for c in range(3)])

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected: thin diagonal legs stay whole
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = (sizes >= min_part * sizes.max())[labels]
    return mask


def preprocess(
    image: np.ndarray | ImageSource,
    *,
    kind: str = "auto",
    size: int = INPUT_SIZE,
    fill: float = R2N2_FILL,
    tolerance: float = BACKGROUND_TOLERANCE,
    return_box: bool = False,
) -> np.ndarray | tuple[np.ndarray, Box]:
    """Turn an R2N2 rendering or a photo into the network's input image.

    Args:
        image: a path or binary file (read with :func:`load_image`), or an array as accepted by
            :func:`composite_on_white`.
        kind: ``"r2n2"``: a 137x137 training-style view, composited onto white and cropped to
            [4:132, 4:132] exactly as in training. ``"photo"``: find the object (:func:`object_mask`),
            crop a square around it so its longest side spans ``fill`` of the frame (white padding
            where the square leaves the image), turn the background white, resize with antialiasing.
            ``"auto"``: ``"r2n2"`` for 137x137 images with transparent pixels or an all-white border,
            ``"photo"`` otherwise.
        size: output side in pixels; the network expects 128.
        fill: object's longest side / output side for photos. The default matches the training views.
        tolerance: background colour tolerance for photos without alpha (see :func:`object_mask`).
        return_box: also return the square crop window in input pixels (e.g. to draw it on the input).

    Returns:
        uint8 [size, size], object dark on white (255). Divide by 255 for the network's float input.
        With ``return_box``, also the :class:`Box` that was cropped (before resizing).

    Raises:
        ImageError: unreadable image, an R2N2 view that is not 137x137, or no object found.
    """
    if kind not in ("auto", "r2n2", "photo"):
        raise ValueError(f"kind must be 'auto', 'r2n2' or 'photo', got {kind!r}")
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"fill is the fraction of the frame the object spans; must be in (0, 1], got {fill}")

    rgba = _as_rgba(image) if isinstance(image, np.ndarray) else load_image(image)
    gray = composite_on_white(rgba)
    if kind == "auto":
        kind = "r2n2" if _looks_like_r2n2_view(rgba, gray) else "photo"

    if kind == "r2n2":
        if gray.shape != (VIEW_SIZE, VIEW_SIZE):
            raise ImageError(
                f"an R2N2 view must be {VIEW_SIZE}x{VIEW_SIZE}, got {gray.shape[1]}x{gray.shape[0]}; "
                "use kind='photo' for other images"
            )
        box = Box(VIEW_CROP.start, VIEW_CROP.start, VIEW_CROP.stop, VIEW_CROP.stop)
        crop = crop_view(gray)
    else:
        mask = object_mask(rgba, tolerance=tolerance)
        if not mask.any():
            raise ImageError(
                "no object found: every pixel matches the background (alpha transparent, or within "
                f"{tolerance:g} of the border colour in every channel); the picture must show an object "
                "on a plain background"
            )
        if not _has_transparency(rgba):  # background found by colour: paint it white as in training views
            gray = np.where(mask, gray, 1.0)
        box = _square_box(mask, fill)
        crop = _crop_padded(gray, box)

    if crop.shape != (size, size):
        crop = resize(crop, (size, size), order=1, anti_aliasing=True, mode="edge")
    pixels = np.rint(np.clip(crop, 0.0, 1.0) * 255).astype(np.uint8)
    return (pixels, box) if return_box else pixels


def _as_rgba(image: np.ndarray) -> np.ndarray:
    """Any gray / gray+alpha / RGB / RGBA array (uint8, uint16 or float in [0, 1]) -> float32 [H, W, 4]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(f"expected an image array [H, W], [H, W, 2], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image is empty (shape {image.shape})")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        if image.min() < 0.0 or image.max() > 1.0:
            raise ImageError("float images must have values in [0, 1]; divide 8-bit data by 255")
        image = image.astype(np.float32, copy=False)
    else:
        raise ImageError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float in [0, 1]")

    channels = image.shape[-1]
    if channels in (1, 2):
        rgba = _gray_to_rgba(image[..., 0])
        if channels == 2:
            rgba[..., 3] = image[..., 1]
        return rgba
    if channels == 3:
        return np.concatenate([image, np.ones_like(image[..., :1])], axis=-1)
    return image


def _gray_to_rgba(gray: np.ndarray) -> np.ndarray:
    return np.stack([gray, gray, gray, np.ones_like(gray)], axis=-1).astype(np.float32)


def _has_transparency(rgba: np.ndarray) -> bool:
    return bool((rgba[..., 3] < 0.5).any())


def _looks_like_r2n2_view(rgba: np.ndarray, gray: np.ndarray) -> bool:
    if gray.shape != (VIEW_SIZE, VIEW_SIZE):
        return False
    if (rgba[..., 3] < 1.0).any():
        return True
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return bool(border.min() >= 250 / 255)  # a few levels of slack for re-encoded views


def _square_box(mask: np.ndarray, fill: float) -> Box:
    """Square window centred on the mask's bounding box, with the longest side at ``fill`` of its side."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(1, round(max(bottom - top, right - left) / fill))
    top = int(np.floor((top + bottom - side) / 2 + 0.5))
    left = int(np.floor((left + right - side) / 2 + 0.5))
    return Box(top, left, top + side, left + side)


def _crop_padded(gray: np.ndarray, box: Box) -> np.ndarray:
    """Crop ``box`` from ``gray``; where the box leaves the image, fill with white."""
    h, w = gray.shape
    pad = ((max(0, -box.top), max(0, box.bottom - h)), (max(0, -box.left), max(0, box.right - w)))
    padded = np.pad(gray, pad, constant_values=1.0)
    top, left = box.top + pad[0][0], box.left + pad[1][0]
    return padded[top : top + (box.bottom - box.top), left : left + (box.right - box.left)]
