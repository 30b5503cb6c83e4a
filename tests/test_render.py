"""imnet.render: R2N2 cameras, grayscale views, previews, depth and normal maps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from imnet.binvox import read_binvox
from imnet.mesh import MeshError
from imnet.render import (
    R2N2_LENS_FOV,
    Renderer,
    View,
    camera_pose,
    depth_image,
    direction_from,
    lens_fov,
    normal_image,
    render_depth_normals,
    render_rgb,
    render_views,
    sample_r2n2_cameras,
)

DATA = Path(__file__).parent / "data"
R2N2_CHAIR = "03001627/1a6f615e8b1b5ae4dbbc9440457e303e"
SIZE = 137


@pytest.fixture(scope="module")
def renderer():
    # One OpenGL context for the whole file: creating one (and compiling its shaders) is slow.
    with Renderer(SIZE) as r:
        yield r


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=0.3)


@pytest.fixture(scope="module")
def slab() -> trimesh.Trimesh:
    """A box that looks different from the front and from the side."""
    return trimesh.creation.box(extents=[0.8, 0.4, 0.15])


def camera(azimuth=30.0, elevation=25.0, ratio=0.8, inplane=0.0) -> np.ndarray:
    return np.array([[azimuth, elevation, inplane, ratio, 25.0]], dtype=np.float32)


def silhouette(images: np.ndarray) -> np.ndarray:
    return images < 255


# --------------------------------------------------------------------------------------------------
# Cameras


def test_sample_r2n2_cameras_follow_r2n2_ranges():
    cameras = sample_r2n2_cameras(500, rng=0)
    assert cameras.shape == (500, 5) and cameras.dtype == np.float32
    azimuth, elevation, inplane, ratio, fov = cameras.T
    assert azimuth.min() >= 0 and azimuth.max() < 360
    assert azimuth.min() < 10 and azimuth.max() > 350  # the whole circle is used
    assert elevation.min() >= 25 and elevation.max() <= 30
    assert np.all(inplane == 0) and np.all(fov == 25)
    assert ratio.min() >= 0.65 and ratio.max() <= 0.95


def test_sample_r2n2_cameras_is_deterministic_per_seed():
    np.testing.assert_array_equal(sample_r2n2_cameras(24, rng=3), sample_r2n2_cameras(24, rng=3))
    assert not np.array_equal(sample_r2n2_cameras(24, rng=3), sample_r2n2_cameras(24, rng=4))
    generator = np.random.default_rng(3)
    np.testing.assert_array_equal(sample_r2n2_cameras(24, rng=generator), sample_r2n2_cameras(24, rng=3))


def test_r2n2_lens_is_35mm_on_32mm_sensor():
    assert lens_fov(25.0) == pytest.approx(R2N2_LENS_FOV) == pytest.approx(49.134, abs=1e-3)
    assert lens_fov(10.0) < lens_fov(25.0) < lens_fov(40.0)


@pytest.mark.parametrize(
    "azimuth, elevation, expected_eye",
    [
        (0.0, 0.0, [0.0, 0.0, -1.0]),  # azimuth 0 looks at the front, which faces -z
        (90.0, 0.0, [1.0, 0.0, 0.0]),
        (180.0, 0.0, [0.0, 0.0, 1.0]),
        (0.0, 90.0, [0.0, 1.0, 0.0]),
    ],
)
def test_camera_pose_places_and_aims_the_camera(azimuth, elevation, expected_eye):
    pose = camera_pose(azimuth, elevation, distance_ratio=0.8)
    np.testing.assert_allclose(pose[:3, 3], np.array(expected_eye) * 0.8 * 1.75, atol=1e-12)
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)
    # The camera looks down its -z axis, at the origin.
    np.testing.assert_allclose(-pose[:3, 2], -pose[:3, 3] / np.linalg.norm(pose[:3, 3]), atol=1e-12)


def test_camera_pose_in_plane_rotation_rolls_about_the_viewing_axis():
    upright, rolled = camera_pose(30, 25, 0.8), camera_pose(30, 25, 0.8, inplane_rotation=90)
    np.testing.assert_allclose(rolled[:3, 3], upright[:3, 3])
    np.testing.assert_allclose(rolled[:3, 2], upright[:3, 2], atol=1e-12)
    np.testing.assert_allclose(rolled[:3, 0], upright[:3, 1], atol=1e-12)  # right turns into up


# --------------------------------------------------------------------------------------------------
# Grayscale views


def test_views_are_gray_objects_on_exactly_white(renderer, slab):
    views = renderer.views(slab, sample_r2n2_cameras(4, rng=0))
    assert views.shape == (4, SIZE, SIZE) and views.dtype == np.uint8
    assert np.all(views[:, [0, 0, -1, -1], [0, -1, 0, -1]] == 255)
    for view in views:
        inside = view[silhouette(view)]
        assert inside.size > 500
        assert 30 < np.median(inside) < 200  # dark-ish gray, like R2N2's objects
        assert inside.std() > 5  # shaded, not a flat silhouette


def test_views_are_centred_on_the_object(renderer, sphere):
    for view in renderer.views(sphere, sample_r2n2_cameras(3, rng=1)):
        rows, cols = np.nonzero(silhouette(view))
        assert rows.mean() == pytest.approx((SIZE - 1) / 2, abs=1.0)
        assert cols.mean() == pytest.approx((SIZE - 1) / 2, abs=1.0)


def test_closer_cameras_give_larger_silhouettes(renderer, slab):
    areas = [silhouette(renderer.views(slab, camera(ratio=ratio))).sum() for ratio in (0.95, 0.8, 0.65)]
    assert areas[0] < areas[1] < areas[2]
    # Perspective: the area grows roughly with the inverse square of the distance.
    assert areas[2] / areas[0] == pytest.approx((0.95 / 0.65) ** 2, rel=0.15)


def test_different_azimuths_give_different_views(renderer, slab):
    front, side = renderer.views(slab, np.concatenate([camera(azimuth=0), camera(azimuth=90)]))
    assert np.abs(silhouette(front).sum() - silhouette(side).sum()) > 500


def test_views_are_deterministic(renderer, slab):
    cameras = sample_r2n2_cameras(3, rng=2)
    np.testing.assert_array_equal(renderer.views(slab, cameras), renderer.views(slab, cameras))


def test_in_plane_rotation_turns_the_image_clockwise(renderer, slab):
    upright, rolled = silhouette(renderer.views(slab, np.concatenate([camera(), camera(inplane=90)])))
    agreement = (np.rot90(upright, k=-1) == rolled).mean()
    assert agreement > 0.995


def test_a_mirrored_view_of_a_left_right_symmetric_shape_is_the_view_from_the_mirrored_azimuth(renderer):
    """What IM-SVR's --flip relies on: a shape symmetric about x = 0 (but not front-to-back), seen
    from azimuth a and mirrored left-right, has the silhouette of the view from azimuth -a."""
    seat = trimesh.creation.box(extents=[0.5, 0.1, 0.4])
    back = trimesh.creation.box(extents=[0.5, 0.5, 0.06])
    back.apply_translation([0.0, 0.3, 0.2])
    leg = trimesh.creation.box(extents=[0.05, 0.3, 0.05])
    legs = [leg.copy().apply_translation([x, -0.2, -0.15]) for x in (-0.2, 0.2)]
    shape = trimesh.util.concatenate([seat, back, *legs])
    left, right, other = silhouette(renderer.views(shape, np.concatenate([camera(azimuth=35), camera(azimuth=-35), camera(azimuth=145)])))
    # The whole 137x137 rendering is mirrored about its centre.
    assert (left[:, ::-1] == right).mean() > 0.998
    assert (left[:, ::-1] == other).mean() < 0.99  # not any view: the mirrored one


def test_faces_are_lit_whatever_their_winding(renderer, slab):
    flipped = slab.copy()
    flipped.invert()
    cameras = camera()
    np.testing.assert_array_equal(renderer.views(slab, cameras), renderer.views(flipped, cameras))


def test_render_views_reproduces_r2n2_framing_on_real_data():
    """Our cameras frame R2N2's chair like R2N2's own renderings do.

    ShapeNetVox32 is in ShapeNetCore v1 orientation (front towards +x); turning it by +90 degrees
    about y gives the v2 orientation (front towards -z) that the camera convention is defined for.
    """
    folder = DATA / "r2n2_sample" / "ShapeNetRendering" / R2N2_CHAIR / "rendering"
    views = np.arange(0, 24, 3)  # every third view keeps the test fast
    cameras = np.loadtxt(folder / "rendering_metadata.txt", dtype=np.float32)[views]
    voxels, _, _ = read_binvox(DATA / "r2n2_sample" / "ShapeNetVox32" / R2N2_CHAIR / "model.binvox")
    mesh = trimesh.voxel.VoxelGrid(voxels).as_boxes()
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(1.0 / np.linalg.norm(mesh.extents))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))

    ours = silhouette(render_views(mesh, cameras))
    assert ours.shape == (len(views), 137, 137)
    errors = []
    for i, view in zip(views, ours):
        theirs = np.asarray(Image.open(folder / f"{i:02d}.png"))[..., 3] > 127
        box = [np.nonzero(mask.any(axis=axis))[0][[0, -1]] for mask in (view, theirs) for axis in (1, 0)]
        errors.append(np.abs(np.concatenate(box[:2]) - np.concatenate(box[2:])))
    # Bounding boxes of the silhouettes agree to about a pixel (the voxels are a coarse chair).
    assert np.mean(errors) < 2.0
    assert np.max(errors) <= 5


# --------------------------------------------------------------------------------------------------
# Colour previews, depth and normals


def test_render_rgb_is_a_coloured_preview_on_white(sphere):
    image = render_rgb(sphere, View(azimuth=30, elevation=20), size=96, color=(0.9, 0.2, 0.2))
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert np.all(image[0, 0] == 255) and np.all(image[-1, -1] == 255)
    inside = image[image.min(axis=2) < 255]
    assert np.all(inside[:, 0] >= inside[:, 1])  # reddish


def test_render_rgb_light_direction_moves_the_highlight(slab):
    lit_from_above = render_rgb(slab, View(azimuth=30, elevation=30), size=96, light_direction=[0, 1, 0])
    lit_from_below = render_rgb(slab, View(azimuth=30, elevation=30), size=96, light_direction=[0, -1, 0])
    # The top face is what the camera sees highest in the image: compare its brightness.
    mask = lit_from_above.min(axis=2) < 255
    top_row = np.nonzero(mask.any(axis=1))[0][0] + 3
    assert lit_from_above[top_row][mask[top_row]].mean() > lit_from_below[top_row][mask[top_row]].mean() + 30


def test_depth_and_normals_of_a_sphere(sphere):
    size, ratio = 64, 0.8
    depth, normals = render_depth_normals(sphere, View(30, 25, ratio), size=size)
    assert depth.shape == (size, size) and depth.dtype == np.float32
    assert normals.shape == (size, size, 3) and normals.dtype == np.float32
    hit = np.isfinite(depth)
    assert np.all(depth[~hit] == np.inf) and np.all(normals[~hit] == 0)
    np.testing.assert_allclose(np.linalg.norm(normals[hit], axis=1), 1.0, atol=1e-5)
    assert np.all(normals[hit][:, 2] > 0)  # camera frame: every visible normal faces the viewer
    # Straight ahead the surface is one radius in front of the centre, facing the camera.
    centre = size // 2
    assert depth[centre, centre] == pytest.approx(ratio * 1.75 - 0.3, abs=5e-3)
    np.testing.assert_allclose(normals[centre, centre], [0, 0, 1], atol=0.05)
    # Same camera as the shaded preview: the silhouettes agree up to anti-aliased edge pixels.
    preview = render_rgb(sphere, View(30, 25, ratio), size=size)
    assert (hit == (preview.min(axis=2) < 255)).mean() > 0.98


def test_direction_from_follows_the_camera_convention():
    np.testing.assert_allclose(direction_from(0, 90), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(direction_from(90, 0), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(direction_from(0, 0), [0, 0, -1], atol=1e-12)  # in front (ShapeNet v2: -z)


def test_depth_and_normal_images_encode_their_values():
    depth = np.array([[np.inf, 1.0], [2.0, 1.5]], np.float32)
    np.testing.assert_array_equal(depth_image(depth), [[255, 0], [200, 100]])
    normals = np.zeros((1, 2, 3), np.float32)
    normals[0, 1] = [0.0, 0.0, 1.0]
    np.testing.assert_array_equal(normal_image(normals), [[[255, 255, 255], [128, 128, 255]]])


def test_object_frame_normals_point_at_the_camera_in_the_middle(sphere):
    _, normals = render_depth_normals(sphere, View(azimuth=90, elevation=0), size=33, frame="object")
    np.testing.assert_allclose(normals[16, 16], [1, 0, 0], atol=0.05)


# --------------------------------------------------------------------------------------------------
# Errors and imports


def test_bad_inputs_raise_helpful_errors(renderer, slab):
    with pytest.raises(ValueError, match=r"\[V, 5\]"):
        renderer.views(slab, np.zeros((3, 4)))
    with pytest.raises(MeshError, match="no faces"):
        renderer.views(trimesh.Trimesh(), camera())
    with pytest.raises(ValueError, match="light_direction"):
        renderer.shaded(slab, camera(), light_direction=[0, 0, 0])
    with pytest.raises(ValueError, match="frame"):
        render_depth_normals(slab, frame="world")
    closed = Renderer(8)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.views(slab, camera())


def test_importing_imnet_render_does_not_load_opengl():
    code = "import sys, imnet.render; assert 'pyrender' not in sys.modules and 'OpenGL' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_closing_one_renderer_leaves_the_others_working(slab):
    with Renderer(32) as outer:
        before = outer.views(slab, camera())
        with Renderer(32) as inner:
            inner.views(slab, camera())
        render_rgb(slab, size=32)  # creates and closes a third one
        np.testing.assert_array_equal(outer.views(slab, camera()), before)


def test_a_forgotten_renderer_does_not_break_the_others(slab):
    with Renderer(32) as kept:
        before = kept.views(slab, camera())
        forgotten = Renderer(32)
        forgotten.views(slab, camera())
        del forgotten  # garbage collected without close()
        np.testing.assert_array_equal(kept.views(slab, camera()), before)
