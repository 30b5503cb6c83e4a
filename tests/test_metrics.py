"""Tests for imnet.metrics: analytic shapes, the published conventions, real fixtures."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import trimesh
from skimage import measure

from imnet import metrics
from imnet.mesh import MeshError

DATA = Path(__file__).parent / "data"
SHAPENET_CHAIR = (
    DATA / "shapenet_v2_sample/03001627/341c9b0583d31770492d9da2668ec34c/models/model_normalized.obj"
)
IMNET_VOXELS = DATA / "imnet_original_sample/samplechair_vox.hdf5"

WORST_CASE = {
    "accuracy": np.sqrt(3),
    "completeness": np.sqrt(3),
    "chamfer_l1": np.sqrt(3),
    "chamfer_l2": 3.0,
    "normal_consistency": -1.0,
    "fscore@1%": 0.0,
    "fscore@2%": 0.0,
}


def sphere(radius: float) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=radius)


def empty_mesh() -> trimesh.Trimesh:
    return trimesh.Trimesh()


def nan_mesh() -> trimesh.Trimesh:
    box = trimesh.creation.box()
    vertices = box.vertices.copy()
    vertices[0] = np.nan
    return trimesh.Trimesh(vertices, box.faces, process=False)


def flat_mesh() -> trimesh.Trimesh:
    return trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)


def voxel_surface(grid: np.ndarray) -> trimesh.Trimesh:
    """Marching-cubes surface of a [R, R, R] grid over [-0.5, 0.5]^3 (closed thanks to padding)."""
    resolution = grid.shape[0]
    vertices, faces, _, _ = measure.marching_cubes(np.pad(grid, 1).astype(np.float32), 0.5)
    return trimesh.Trimesh((vertices - 0.5) / resolution - 0.5, faces)


# --- sampling ---------------------------------------------------------------------------------


def test_sample_surface_gives_points_on_the_surface_with_their_face_normals():
    points, normals = metrics.sample_surface(sphere(0.4), 2000, seed=3)
    assert points.shape == normals.shape == (2000, 3)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 0.4, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0)
    radial = points / np.linalg.norm(points, axis=1, keepdims=True)
    assert np.all((normals * radial).sum(axis=1) > 0.99)


def test_sample_surface_is_deterministic_per_seed():
    mesh = sphere(0.4)
    first, _ = metrics.sample_surface(mesh, 100, seed=1)
    again, _ = metrics.sample_surface(mesh, 100, seed=1)
    other, _ = metrics.sample_surface(mesh, 100, seed=2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("make_mesh", [empty_mesh, nan_mesh, flat_mesh])
def test_sample_surface_of_a_degenerate_mesh_is_empty(make_mesh):
    points, normals = metrics.sample_surface(make_mesh(), 100)
    assert points.shape == normals.shape == (0, 3)


def test_sample_surface_rejects_a_scene_with_a_hint():
    with pytest.raises(MeshError, match="force='mesh'"):
        metrics.sample_surface(trimesh.Scene(), 10)


def test_iou_points_fill_the_padded_box():
    points = metrics.sample_iou_points(10_000, padding=0.05, seed=0)
    assert points.shape == (10_000, 3)
    assert points.min() >= -0.55 and points.max() <= 0.55
    assert points.min() < -0.54 and points.max() > 0.54


# --- occupancy and IoU ------------------------------------------------------------------------


def test_iou_occupancy_counts_intersection_over_union():
    a = np.array([1, 1, 0, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 1], dtype=bool)
    assert metrics.iou_occupancy(a, b) == pytest.approx(2 / 4)
    assert metrics.iou_occupancy(a, a) == 1.0
    assert metrics.iou_occupancy(a.astype(np.uint8), b.astype(np.uint8)) == pytest.approx(0.5)


def test_iou_occupancy_of_two_empty_shapes_is_nan():
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert np.isnan(metrics.iou_occupancy(empty, empty))


def test_iou_occupancy_rejects_mismatched_or_probability_inputs():
    with pytest.raises(ValueError, match="same shape"):
        metrics.iou_occupancy(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(TypeError, match="field >= 0.5"):
        metrics.iou_occupancy(np.full(3, 0.7), np.ones(3, bool))


def test_occupancy_from_grid_looks_up_the_nearest_cell():
    grid = np.zeros((4, 4, 4), dtype=bool)
    grid[1, 2, 3] = True
    centres = (np.array([[1, 2, 3], [2, 2, 3], [1, 2, 2]]) + 0.5) / 4 - 0.5
    np.testing.assert_array_equal(metrics.occupancy_from_grid(grid, centres), [True, False, False])
    # Anywhere inside the cell, and a trailing channel axis as in the HDF5 voxels.
    corner = np.array([[1, 2, 3]]) / 4 - 0.5 + 1e-6
    assert metrics.occupancy_from_grid(grid[..., None].astype(np.uint8), corner)[0]


def test_occupancy_from_grid_is_false_outside_the_unit_cube():
    grid = np.ones((8, 8, 8), dtype=bool)
    points = np.array([[0.0, 0.0, 0.0], [0.52, 0.0, 0.0], [0.0, -0.51, 0.0], [0.0, 0.0, 0.5]])
    np.testing.assert_array_equal(metrics.occupancy_from_grid(grid, points), [True, False, False, False])


def test_occupancy_from_grid_rejects_non_cubic_grids():
    with pytest.raises(ValueError, match=r"\[R, R, R\]"):
        metrics.occupancy_from_grid(np.zeros((4, 4, 5), bool), np.zeros((1, 3)))


def test_iou_of_concentric_spheres_is_the_volume_ratio():
    iou = metrics.iou_meshes(sphere(0.3), sphere(0.4), n_points=100_000)
    assert iou == pytest.approx((0.3 / 0.4) ** 3, abs=0.015)


@pytest.mark.parametrize("shift", [0.1, 0.3])
def test_iou_of_unit_cubes_shifted_along_x(shift):
    moved = trimesh.creation.box()
    moved.apply_translation([shift, 0, 0])
    # A wider box so both unit cubes lie inside it.
    iou = metrics.iou_meshes(moved, trimesh.creation.box(), n_points=100_000, padding=0.5)
    assert iou == pytest.approx((1 - shift) / (1 + shift), abs=0.01)


def test_iou_of_identical_meshes_is_one():
    cube = trimesh.creation.box(extents=(0.6, 0.8, 0.4))
    assert metrics.iou_meshes(cube, cube, n_points=20_000) == 1.0


def test_iou_needs_exactly_one_ground_truth():
    cube = trimesh.creation.box()
    with pytest.raises(ValueError, match="exactly one"):
        metrics.iou_meshes(cube)
    with pytest.raises(ValueError, match="exactly one"):
        metrics.iou_meshes(cube, cube, gt_occupancy=np.ones((4, 4, 4), bool))


def test_iou_from_real_voxels_against_their_own_surface():
    with h5py.File(IMNET_VOXELS) as f:
        voxels = f["voxels"][:]  # [3, 64, 64, 64, 1] uint8
    surface = voxel_surface(voxels[0, ..., 0])
    assert surface.is_watertight
    own = metrics.iou_meshes(surface, gt_occupancy=voxels[0], n_points=50_000)
    # Marching cubes cuts the voxel corners, so close to but below 1.
    assert 0.9 < own < 1.0
    via_callable = metrics.iou_meshes(
        surface, gt_occupancy=lambda p: metrics.occupancy_from_grid(voxels[0], p), n_points=50_000
    )
    assert via_callable == own
    assert metrics.iou_meshes(surface, gt_occupancy=voxels[1], n_points=50_000) < 0.5


def test_iou_of_closed_marching_cubes_surfaces_is_reproducible_and_silent(recwarn):
    grid = np.random.default_rng(0).random((6, 6, 6)) < 0.5
    surface = voxel_surface(grid)
    assert not surface.is_watertight  # some edges have four faces, yet the surface is closed
    # Rays that trimesh would re-cast in a random direction must not change the answer.
    assert metrics.iou_meshes(surface, surface, n_points=20_000) == 1.0
    assert not [w for w in recwarn if "boundary edges" in str(w.message)]


def test_iou_warns_for_an_open_shapenet_mesh():
    chair = trimesh.load(SHAPENET_CHAIR, force="mesh")
    with pytest.warns(UserWarning, match="gt_mesh has boundary edges.*gt_occupancy"):
        metrics.iou_meshes(voxel_surface(np.ones((4, 4, 4), bool)), chair, n_points=2000)


# --- Chamfer, normal consistency, F-score -----------------------------------------------------


def test_identical_point_clouds_score_perfectly():
    points, normals = metrics.sample_surface(sphere(0.5), 5000)
    result = metrics.pointcloud_metrics(points, normals, points, normals)
    assert result == {
        "accuracy": 0.0,
        "completeness": 0.0,
        "chamfer_l1": 0.0,
        "chamfer_l2": 0.0,
        "normal_consistency": pytest.approx(1.0),
        "fscore@1%": 1.0,
        "fscore@2%": 1.0,
    }


def test_identical_meshes_score_perfectly_up_to_sampling_noise():
    # The two surfaces are sampled independently, like the published GT point clouds.
    cube = trimesh.creation.box()
    result = metrics.mesh_metrics(cube, cube, n_points=100_000)
    assert result["chamfer_l1"] < 0.005
    assert result["normal_consistency"] > 0.99
    assert result["fscore@1%"] > 0.99
    assert result["fscore@2%"] == 1.0


def test_concentric_spheres_are_as_far_apart_as_their_radii():
    result = metrics.mesh_metrics(sphere(0.3), sphere(0.4), n_points=20_000, normalize=False)
    assert result["accuracy"] == pytest.approx(0.1, rel=0.02)
    assert result["completeness"] == pytest.approx(0.1, rel=0.02)
    assert result["chamfer_l1"] == pytest.approx(0.1, rel=0.02)
    assert result["chamfer_l2"] == pytest.approx(0.1**2, rel=0.04)
    assert result["normal_consistency"] > 0.99
    assert result["fscore@1%"] == result["fscore@2%"] == 0.0
    assert metrics.chamfer_imnet(sphere(0.3), sphere(0.4)) == pytest.approx(2 * 0.1**2, rel=0.05)


def test_fscore_keys_follow_the_thresholds():
    # Points 0.1 apart, each moved by 0.012: every nearest neighbour is 0.012 away.
    points = np.stack(np.meshgrid(*[np.linspace(-0.5, 0.5, 11)] * 3), axis=-1).reshape(-1, 3)
    moved = points + [0.012, 0, 0]
    result = metrics.pointcloud_metrics(points, None, moved, None, thresholds=(0.01, 0.015))
    assert result["fscore@1%"] == 0.0
    assert result["fscore@1.5%"] == 1.0


def test_metrics_do_not_depend_on_point_order():
    pred_points, pred_normals = metrics.sample_surface(sphere(0.3), 3000, seed=1)
    gt_points, gt_normals = metrics.sample_surface(trimesh.creation.box(), 4000, seed=2)
    rng = np.random.default_rng(0)
    p, g = rng.permutation(3000), rng.permutation(4000)
    ordered = metrics.pointcloud_metrics(pred_points, pred_normals, gt_points, gt_normals)
    shuffled = metrics.pointcloud_metrics(pred_points[p], pred_normals[p], gt_points[g], gt_normals[g])
    assert shuffled == pytest.approx(ordered, rel=1e-12)


def test_missing_normals_leave_normal_consistency_undefined():
    points, _ = metrics.sample_surface(sphere(0.5), 500)
    result = metrics.pointcloud_metrics(points, None, points, None)
    assert np.isnan(result["normal_consistency"])
    assert result["chamfer_l1"] == 0.0


@pytest.mark.parametrize("make_mesh", [empty_mesh, nan_mesh, flat_mesh])
def test_empty_or_degenerate_prediction_gets_the_worst_case(make_mesh):
    gt = sphere(0.4)
    assert metrics.mesh_metrics(make_mesh(), gt, n_points=1000) == pytest.approx(WORST_CASE)
    assert metrics.chamfer_imnet(make_mesh(), gt) == 6.0
    assert metrics.iou_meshes(make_mesh(), gt, n_points=1000) == 0.0


def test_empty_point_cloud_gets_the_worst_case():
    gt_points, gt_normals = metrics.sample_surface(sphere(0.4), 100)
    result = metrics.pointcloud_metrics(np.empty((0, 3)), np.empty((0, 3)), gt_points, gt_normals)
    assert result == pytest.approx(WORST_CASE)


def test_empty_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="gt_mesh is empty"):
        metrics.mesh_metrics(sphere(0.4), empty_mesh(), n_points=100)
    with pytest.raises(ValueError, match="gt_points"):
        metrics.pointcloud_metrics(np.zeros((3, 3)), None, np.empty((0, 3)), None)


def test_point_clouds_must_be_n_by_3():
    with pytest.raises(ValueError, match=r"pred_points must have shape \[N, 3\]"):
        metrics.pointcloud_metrics(np.zeros((5, 2)), None, np.zeros((5, 3)), None)
    with pytest.raises(ValueError, match="same shape as their points"):
        points = np.zeros((5, 3))
        metrics.pointcloud_metrics(points, np.zeros((4, 3)), points, points)


def test_the_two_chamfer_conventions_relate_as_documented():
    pred = sphere(0.3)
    gt = trimesh.creation.box(extents=(0.5, 0.8, 0.6))
    gt.apply_translation([0.05, 0, 0])
    imnet_cd = metrics.chamfer_imnet(pred, gt, n_points=4096, seed=7)
    raw = metrics.mesh_metrics(pred, gt, n_points=4096, seed=7, normalize=False)
    normalised = metrics.mesh_metrics(pred, gt, n_points=4096, seed=7)
    longest_side = 0.8
    assert imnet_cd == pytest.approx(2 * raw["chamfer_l2"], rel=1e-12)
    assert imnet_cd == pytest.approx(2 * longest_side**2 * normalised["chamfer_l2"], rel=1e-9)


def test_a_perfect_prediction_scores_the_documented_sampling_floor():
    mesh = sphere(0.5)
    floor = 2 * mesh.area / (np.pi * 4096)
    assert metrics.chamfer_imnet(mesh, mesh) == pytest.approx(floor, rel=0.1)


def test_normalised_metrics_do_not_change_when_both_meshes_are_scaled():
    pred, gt = sphere(0.3), trimesh.creation.box(extents=(0.5, 0.8, 0.6))
    before = metrics.mesh_metrics(pred, gt, n_points=5000)
    transform = trimesh.transformations.scale_and_translate(10.0, [1.0, -2.0, 3.0])
    pred.apply_transform(transform)
    gt.apply_transform(transform)
    after = metrics.mesh_metrics(pred, gt, n_points=5000)
    assert after == pytest.approx(before, rel=1e-9)


def test_real_shapenet_mesh_against_itself():
    chair = trimesh.load(SHAPENET_CHAIR, force="mesh")
    result = metrics.mesh_metrics(chair, chair, n_points=20_000)
    assert result["chamfer_l1"] < 0.01
    assert result["fscore@2%"] > 0.99
    assert result["normal_consistency"] > 0.9
