"""imnet.images: reading any image mode, R2N2 views cropped as in training, photos centred and scaled."""

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from imnet.images import R2N2_FILL, Box, ImageError, composite_on_white, load_image, object_mask, preprocess

DATA = Path(__file__).parent / "data"
VIEWS = sorted((DATA / "r2n2_sample" / "ShapeNetRendering").glob("*/*/rendering/*.png"))
PHOTOS = sorted((DATA / "real_photos").glob("*.png"))


def _bbox(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _assert_network_input(pixels, *, fill=R2N2_FILL):
    """128x128 uint8, white border, dark object centred whose longest side spans ``fill`` of the frame."""
    assert pixels.shape == (128, 128) and pixels.dtype == np.uint8
    border = np.concatenate([pixels[:4].ravel(), pixels[-4:].ravel(), pixels[:, :4].ravel(), pixels[:, -4:].ravel()])
    assert border.min() >= 250
    top, bottom, left, right = _bbox(pixels < 200)
    assert abs((top + bottom) / 2 - 64) <= 3 and abs((left + right) / 2 - 64) <= 3
    assert max(bottom - top, right - left) / 128 == pytest.approx(fill, abs=0.04)


def _square_picture(mode, size=(60, 40)):
    """A dark square in the middle of a white (or transparent) picture, in the given Pillow mode."""
    w, h = size
    inside = np.zeros((h, w), bool)
    inside[h // 4 : 3 * h // 4, w // 2 - h // 4 : w // 2 + h // 4] = True
    if mode == "I;16":
        return PIL.Image.fromarray(np.where(inside, 8000, 65535).astype(np.uint16)), inside
    if mode == "P":  # index 0 transparent, 1 dark gray
        img = PIL.Image.fromarray(inside.astype(np.uint8), mode="L").convert("P")
        img.putpalette([200, 0, 0] + [40, 40, 40] + [0, 0, 0] * 254)
        img.info["transparency"] = 0
        return img, inside
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = np.where(inside[..., None], 30, 255)
    rgba[..., 3] = 255
    if mode in ("RGBA", "LA"):
        rgba[~inside] = (90, 10, 200, 0)  # junk colour under transparency, as in R2N2 renderings
    return PIL.Image.fromarray(rgba, "RGBA").convert(mode), inside


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"),
     ("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "WEBP"), ("RGBA", "WEBP")],
)
def test_every_mode_loads_and_preprocesses(tmp_path, mode, fmt):
    img, inside = _square_picture(mode)
    path = tmp_path / f"picture.{fmt.lower()}"
    img.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))

    rgba = load_image(path)
    assert rgba.shape == (40, 60, 4) and rgba.dtype == np.float32
    assert rgba.min() >= 0.0 and rgba.max() <= 1.0
    gray = composite_on_white(rgba)
    slack = 0.1 if fmt == "JPEG" else 0.0  # ringing at the square's edges
    assert gray[~inside].min() >= 0.99 - slack  # background white, also where it was transparent
    assert gray[inside].max() <= 0.2 + slack
    if fmt != "JPEG":
        np.testing.assert_array_equal(object_mask(rgba), inside)
    _assert_network_input(preprocess(path))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768], [65535, 65535]], np.uint16)
    PIL.Image.fromarray(values).save(tmp_path / "deep.png")
    rgba = load_image(tmp_path / "deep.png")
    np.testing.assert_allclose(rgba[..., 0], values / 65535, atol=1e-6)
    np.testing.assert_array_equal(rgba[..., 3], 1.0)


def test_palette_transparency_becomes_alpha(tmp_path):
    img, inside = _square_picture("P")
    img.save(tmp_path / "palette.png")
    alpha = load_image(tmp_path / "palette.png")[..., 3]
    np.testing.assert_array_equal(alpha, inside.astype(np.float32))


def test_exif_orientation_is_applied(tmp_path):
    # Stored 60 wide x 40 high with a dark block at the top-left; orientation 6 = shown rotated 90 deg
    # clockwise, so the upright picture is 40 wide x 60 high with the block at the top-right.
    stored = np.full((40, 60, 3), 255, np.uint8)
    stored[:10, :10] = 0
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif)
    gray = composite_on_white(load_image(tmp_path / "phone.jpg"))
    assert gray.shape == (60, 40)
    assert gray[:10, -10:].mean() < 0.1 and gray[:10, :10].mean() > 0.9


def test_file_objects_are_accepted():
    data = io.BytesIO(PHOTOS[0].read_bytes())
    np.testing.assert_array_equal(preprocess(data), preprocess(PHOTOS[0]))


def test_r2n2_views_are_composited_and_cropped_exactly_as_in_training():
    for view in VIEWS:
        rgba = np.asarray(PIL.Image.open(view), dtype=np.float64) / 255
        alpha = rgba[..., 3]
        gray = rgba[..., :3] @ [0.299, 0.587, 0.114] * alpha + (1 - alpha)
        expected = np.rint(gray * 255).astype(np.uint8)[4:132, 4:132]

        pixels, box = preprocess(view, return_box=True)
        assert box == Box(4, 4, 132, 132)
        np.testing.assert_array_equal(pixels, expected, err_msg=view.name)
    np.testing.assert_array_equal(preprocess(VIEWS[0], kind="r2n2"), preprocess(VIEWS[0]))


def test_stored_gray_view_is_recognised_as_r2n2():
    view = VIEWS[0]
    stored = np.rint(composite_on_white(load_image(view)) * 255).astype(np.uint8)  # like the HDF5 `pixels`
    np.testing.assert_array_equal(preprocess(stored), stored[4:132, 4:132])


def test_fill_constant_matches_the_training_views():
    fills = []
    for view in VIEWS:
        top, bottom, left, right = _bbox(object_mask(load_image(view))[4:132, 4:132])
        fills.append(max(bottom - top, right - left) / 128)
    assert len(fills) == 24
    assert np.median(fills) == pytest.approx(R2N2_FILL, abs=0.005)


def test_r2n2_view_as_photo_is_recentred_at_the_same_scale():
    _assert_network_input(preprocess(VIEWS[0], kind="photo"))


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.stem)
def test_real_photo(photo):
    rgba = load_image(photo)
    top, bottom, left, right = _bbox(object_mask(rgba))
    # The product fills most of the 127x127 photo height and about two thirds of its width.
    assert bottom - top > 90 and 50 < right - left < 110
    assert abs((left + right) / 2 - 63) < 10

    pixels, box = preprocess(photo, return_box=True)
    assert box.bottom - box.top == box.right - box.left  # square window
    assert box.top <= top and box.bottom >= bottom and box.left <= left and box.right >= right
    _assert_network_input(pixels)


@pytest.mark.parametrize("background", [(40, 90, 200), (128, 128, 128)], ids=["blue", "gray"])
def test_coloured_background_becomes_white(background):
    rng = np.random.default_rng(0)
    photo = np.empty((300, 400, 3), np.float64)
    photo[:] = np.array(background) / 255
    photo += rng.normal(0, 0.01, photo.shape)  # sensor noise
    photo[100:200, 150:220] = (0.05, 0.05, 0.05)  # seat
    photo[200:260, 150:158] = photo[200:260, 212:220] = (0.05, 0.05, 0.05)  # legs
    pixels = preprocess(np.clip(photo, 0, 1))
    _assert_network_input(pixels)
    assert np.median(pixels) == 255


def test_tiny_object_in_large_image_is_scaled_up():
    photo = np.full((900, 1200), 255, np.uint8)
    photo[600:620, 300:310] = 20
    pixels = preprocess(photo)
    _assert_network_input(pixels)
    top, bottom, left, right = _bbox(pixels < 128)
    assert bottom - top == pytest.approx(R2N2_FILL * 128, abs=2)
    assert right - left == pytest.approx(R2N2_FILL * 128 / 2, abs=2)


def test_specks_are_ignored():
    photo = np.full((200, 200), 255, np.uint8)
    photo[50:150, 80:120] = 30
    photo[5, 190] = photo[195, 3] = 0  # dust
    top, bottom, left, right = _bbox(object_mask(photo))
    assert (top, bottom, left, right) == (50, 150, 80, 120)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nothere\.png: no such file"):
        load_image(tmp_path / "nothere.png")


def test_text_file(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageError, match=r"notes\.png: not an image"):
        preprocess(tmp_path / "notes.png")


def test_empty_file_and_empty_array(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: not an image"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match=r"image is empty"):
        preprocess(np.zeros((0, 0, 4), np.uint8))


def test_truncated_file(tmp_path):
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cut\.png: .*truncated"):
        load_image(tmp_path / "cut.png")


@pytest.mark.parametrize(
    "image", [np.full((50, 80, 3), 0.7), np.zeros((137, 137, 4), np.uint8)], ids=["uniform", "transparent"]
)
def test_no_object(image):
    with pytest.raises(ImageError, match="no object found"):
        preprocess(image, kind="photo")


def test_bad_arguments():
    with pytest.raises(ImageError, match="137x137"):
        preprocess(np.full((100, 100), 255, np.uint8), kind="r2n2")
    with pytest.raises(ValueError, match="kind must be"):
        preprocess(np.full((100, 100), 255, np.uint8), kind="sketch")
    with pytest.raises(ValueError, match="fill"):
        preprocess(np.full((100, 100), 255, np.uint8), fill=1.5)
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        composite_on_white(np.full((4, 4, 3), 200.0))


def test_crop_view_is_the_training_crop_for_numpy_and_torch():
    import torch

    from imnet.images import crop_view, input_tensor

    views = np.arange(2 * 137 * 137, dtype=np.int64).reshape(2, 137, 137).astype(np.uint8)
    np.testing.assert_array_equal(crop_view(views), views[:, 4:132, 4:132])
    np.testing.assert_array_equal(crop_view(torch.from_numpy(views)).numpy(), views[:, 4:132, 4:132])
    with pytest.raises(ImageError, match="137x137"):
        crop_view(views[:, :128, :128])
    image = input_tensor(crop_view(views))
    assert image.shape == (2, 1, 128, 128) and image.dtype == torch.float32
    np.testing.assert_allclose(image[:, 0].numpy(), views[:, 4:132, 4:132] / 255.0, rtol=1e-6)
    with pytest.raises(ImageError, match="128x128"):
        input_tensor(views)
