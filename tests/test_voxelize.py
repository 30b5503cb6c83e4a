from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from imnet.binvox import binvox_bounds, read_binvox
from imnet.voxelize import voxelize_solid

DATA = Path(__file__).parent / "data"
SHAPENET = sorted((DATA / "shapenet_v2_sample").glob("*/*/models"))
R = 128
VOXEL = 1 / R


def _centres(resolution=R):
    c = (np.arange(resolution) + 0.5) / resolution - 0.5
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1).reshape(-1, 3)


def _exact(*parts, resolution=R):
    """Ground truth: voxel centres inside any of the closed parts."""
    inside = np.zeros((resolution,) * 3, dtype=bool)
    for part in parts:
        if isinstance(part, trimesh.primitives.Box):
            inside |= _inside_box(part, resolution)
        else:
            inside |= part.contains(_centres(resolution)).reshape(inside.shape)
    return inside


def _inside_box(box, resolution):
    """Exact inside test for a box primitive, much faster than trimesh's ray tests."""
    axes = np.ix_(*[(np.arange(resolution) + 0.5) / resolution - 0.5] * 3)
    to_local = np.linalg.inv(box.primitive.transform)
    inside = np.ones((resolution,) * 3, dtype=bool)
    for row, half in zip(to_local[:3], box.primitive.extents / 2):
        # Skipping zero terms keeps axis-aligned boxes on 1D coordinate arrays.
        local = row[3] + sum(row[j] * axes[j] for j in range(3) if row[j] != 0)
        inside &= np.abs(local) <= half
    return inside


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _box(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.primitives.Box(extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2))


def _chair():
    """Seat, back and four legs: closed boxes that overlap where they join."""
    legs = [_box([x - 0.03, -0.42, z - 0.03], [x + 0.03, -0.05, z + 0.03]) for x in (-0.2, 0.2) for z in (-0.2, 0.2)]
    return [_box([-0.25, -0.08, -0.25], [0.25, -0.01, 0.25]), _box([-0.25, -0.04, -0.25], [0.25, 0.43, -0.19]), *legs]


def _plate():
    """A tilted plate exactly two voxels thick."""
    tilt = trimesh.transformations.euler_matrix(0.3, 0.2, 0.4)
    return [trimesh.primitives.Box(extents=[0.7, 2 * VOXEL, 0.5], transform=tilt)]


def _slats():
    """A chair back: slats 3 voxels apart joined by a rail, slots open on both sides."""
    rail = _box([-0.3, 0.2, -0.05], [0.3, 0.3, 0.05])
    slats = [_box([x, -0.3, -0.03], [x + 5 * VOXEL, 0.25, 0.03]) for x in np.arange(-0.3, 0.25, 8 * VOXEL)]
    return [rail, *slats]


WATERTIGHT = {
    "sphere": lambda: [trimesh.creation.icosphere(subdivisions=4, radius=0.3)],
    "torus": lambda: [trimesh.creation.torus(major_radius=0.3, minor_radius=0.1)],
    "plate": _plate,
    "chair": _chair,
    "slats": _slats,
}


@pytest.mark.parametrize("name", WATERTIGHT)
def test_watertight_shapes_match_exact_inside_test(name):
    parts = WATERTIGHT[name]()
    voxels = voxelize_solid(trimesh.util.concatenate(parts), resolution=R)
    assert voxels.shape == (R, R, R) and voxels.dtype == bool
    assert _iou(voxels, _exact(*parts)) >= 0.98


def _without_faces_near(mesh, point, radius):
    keep = np.linalg.norm(mesh.triangles_center - point, axis=1) > radius
    return trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False)


def test_sphere_with_small_hole_is_filled_solid():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.35)
    pole = np.array([0.0, 0.0, 0.35])
    holed = _without_faces_near(sphere, pole, radius=1.5 * VOXEL)
    _, hole_radius, _ = trimesh.proximity.closest_point(holed, [pole])
    assert hole_radius[0] >= VOXEL  # the hole is at least 2 voxels wide

    voxels = voxelize_solid(holed, resolution=R)
    assert _iou(voxels, voxelize_solid(sphere, resolution=R)) >= 0.995
    assert voxels[R // 2, R // 2, R // 2]
    # Without gap closing the outside floods in through the hole, leaving a shell.
    assert not voxelize_solid(holed, resolution=R, close_gaps=0)[R // 2, R // 2, R // 2]


def test_box_whose_faces_do_not_meet_is_filled_solid():
    half, gap = 0.3, 1.5 * VOXEL
    faces = []
    for axis in range(3):
        for side in (-half, half):
            lo, hi = np.full(3, -half + gap), np.full(3, half - gap)
            lo[axis] = hi[axis] = side
            faces.append(_box(lo, hi))  # flat: two back-to-back quads, short of the box's edges
    voxels = voxelize_solid(trimesh.util.concatenate(faces), resolution=R)
    assert _iou(voxels, _exact(_box([-half] * 3, [half] * 3))) >= 0.98


def test_inner_faces_flipped_and_duplicated_faces_change_nothing():
    box = _box([-0.3, -0.2, -0.25], [0.3, 0.2, 0.25])
    reference = voxelize_solid(box, resolution=64)

    partition = _box([0.0123, -0.19, -0.24], [0.0123, 0.19, 0.24])
    flipped = trimesh.Trimesh(box.vertices, box.faces[:, ::-1], process=False)
    messy = trimesh.util.concatenate([box, partition, flipped])
    np.testing.assert_array_equal(voxelize_solid(messy, resolution=64), reference)


def test_open_cup_keeps_its_inside_empty():
    wall = trimesh.creation.annulus(r_min=0.2, r_max=0.25, height=0.6)
    bottom = trimesh.creation.cylinder(radius=0.25, height=0.08)
    bottom.apply_translation([0, 0, -0.27])  # overlaps the bottom of the wall
    voxels = voxelize_solid(trimesh.util.concatenate([wall, bottom]), resolution=R)
    assert _iou(voxels, _exact(wall, bottom)) >= 0.98

    points = _centres().reshape(R, R, R, 3)
    cavity = (np.linalg.norm(points[..., :2], axis=-1) < 0.19) & (points[..., 2] > -0.22)
    assert cavity.sum() > 100_000 and not voxels[cavity].any()


def test_single_sheet_becomes_one_voxel_layer():
    sheet = _box([-0.25, 0.0123, -0.25], [0.25, 0.0123, 0.25])  # zero thickness: outside on both sides
    voxels = voxelize_solid(sheet, resolution=R)
    layer = round((0.0123 + 0.5) * R - 0.5)
    assert voxels.sum() == voxels[:, layer, :].sum() == 64 * 64


def test_index_order_and_bounds():
    box = _box([0.1, -0.4, 0.0], [0.3, -0.2, 0.05])
    occupied = np.argwhere(voxelize_solid(box, resolution=20))
    np.testing.assert_array_equal(occupied.min(axis=0), [12, 2, 10])
    np.testing.assert_array_equal(occupied.max(axis=0), [15, 5, 10])

    # Anisotropic box: voxel size (0.1, 0.2, 0.4); cell centres at bounds[0] + (i + 0.5) * size.
    box = _box([0.1, 0.2, 0.4], [0.3, 0.6, 1.2])
    occupied = np.argwhere(voxelize_solid(box, resolution=10, bounds=[[0, 0, 0], [1, 2, 4]]))
    np.testing.assert_array_equal(occupied.min(axis=0), [1, 1, 1])
    np.testing.assert_array_equal(occupied.max(axis=0), [2, 2, 2])


def test_geometry_outside_bounds_is_ignored():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    far_away = _box([2.0, 2.0, 2.0], [3.0, 3.0, 3.0])
    with_far_away = trimesh.util.concatenate([sphere, far_away])
    np.testing.assert_array_equal(voxelize_solid(with_far_away, resolution=32), voxelize_solid(sphere, resolution=32))


def test_geometry_entirely_outside_bounds_gives_no_voxels():
    assert not voxelize_solid(_box([2.0, 2.0, 2.0], [3.0, 3.0, 3.0]), resolution=16).any()


def test_shapes_in_a_corner_and_apart_are_exact():
    # The labelling runs only inside the walls' bounding box; parts far apart and in a corner
    # of the grid must come out the same as each on its own.
    corner = _box([-0.5, -0.5, -0.5], [-0.3, -0.2, -0.35])
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.12).apply_translation([0.3, 0.3, 0.3])
    both = voxelize_solid(trimesh.util.concatenate([corner, ball]), resolution=64)
    np.testing.assert_array_equal(both, voxelize_solid(corner, resolution=64) | voxelize_solid(ball, resolution=64))
    assert _iou(both, _exact(corner, ball, resolution=64)) >= 0.98


def test_shape_filling_the_whole_box():
    assert voxelize_solid(trimesh.creation.box(extents=[1, 1, 1]), resolution=16).all()


def test_degenerate_input_is_rejected():
    with pytest.raises(ValueError, match="no faces"):
        voxelize_solid(trimesh.Trimesh())
    bad = trimesh.creation.box()
    bad.vertices[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        voxelize_solid(bad)
    with pytest.raises(ValueError, match="force='mesh'"):
        voxelize_solid(trimesh.Scene(trimesh.creation.box()))
    box = trimesh.creation.box()
    with pytest.raises(ValueError, match="resolution"):
        voxelize_solid(box, resolution=0)
    with pytest.raises(ValueError, match="close_gaps"):
        voxelize_solid(box, close_gaps=-1)
    with pytest.raises(ValueError, match="bounds"):
        voxelize_solid(box, bounds=[[0, 0, 0], [1, -1, 1]])


# --- Real data: ShapeNet v2 meshes against their official 128^3 solid binvox -----------------------


@pytest.fixture(scope="module")
def shapenet_voxels():
    """{model id: (ours, official)}, both bool [128, 128, 128] indexed [x, y, z] on binvox's grid."""
    out = {}
    for model_dir in SHAPENET:
        official, translate, scale = read_binvox(model_dir / "model_normalized.solid.binvox")
        mesh = trimesh.load(model_dir / "model_normalized.obj", force="mesh")
        ours = voxelize_solid(mesh, resolution=official.shape[0], bounds=binvox_bounds(translate, scale))
        out[model_dir.parent.name] = (ours, official)
    return out


def _near(voxels):
    """Voxels within one voxel (26-neighbourhood) of an occupied one."""
    return ndimage.binary_dilation(voxels, np.ones((3, 3, 3), bool))


def _agreement(ours, official):
    """IoU, precision within one voxel, recall within one voxel."""
    return (
        _iou(ours, official),
        (ours & _near(official)).sum() / ours.sum(),
        (official & _near(ours)).sum() / official.sum(),
    )


# binvox marks every voxel that the surface passes through, we mark voxels whose centre is inside:
# the official voxels are a half-voxel-thicker version of ours (IoU about 0.91, but within one voxel
# they agree completely). Chair 353bbd... is a sheet model whose seat and back binvox dropped (see
# tests/test_binvox.py), so only "official is contained in ours" holds there.
EXPECTED = {  # model id: (min IoU, min precision within 1 voxel, min recall within 1 voxel)
    "4de653411d132abdf1e2558bb9cfc329": (0.88, 0.99, 0.99),
    "341c9b0583d31770492d9da2668ec34c": (0.88, 0.99, 0.99),
    "353bbd3b916426d24502f857a1cf320e": (0.40, 0.50, 0.99),
}


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_shapenet_matches_official_solid_binvox(shapenet_voxels, model_id):
    iou, precision, recall = _agreement(*shapenet_voxels[model_id])
    min_iou, min_precision, min_recall = EXPECTED[model_id]
    assert iou >= min_iou and precision >= min_precision and recall >= min_recall


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_shapenet_comparison_with_wrong_axes_agrees_far_less(shapenet_voxels, model_id):
    ours, official = shapenet_voxels[model_id]
    right_iou, _, _ = _agreement(ours, official)
    # x <-> z swapped, and binvox's raw storage order [x, z, y] taken as [x, y, z].
    for perm in [(2, 1, 0), (0, 2, 1)]:
        iou, precision, recall = _agreement(ours, official.transpose(perm))
        assert iou < right_iou / 2 and precision < 0.6 and recall < 0.6, perm
